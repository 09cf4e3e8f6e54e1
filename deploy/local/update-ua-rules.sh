#!/usr/bin/env bash
# Refreshes the user-agent rules the sink embeds: uap-core's regexes.yaml, converted to JSON.
#
#   deploy/local/update-ua-rules.sh [VERSION]     (default: the version in sink/rules/uap-core/VERSION)
#
# uap-core (https://github.com/ua-parser/uap-core, Apache-2.0) is the rule set every ua-parser
# port shares; it is published to the npm registry, which is where this script takes it from.
# The sink reads JSON so that it needs no YAML parser; the conversion keeps every field as is.
# Review the diff, run the tests, and commit the three files under sink/rules/uap-core/.
source "$(dirname "$0")/lib.sh"

DEST="$ROOT/sink/rules/uap-core"
VERSION="${1:-$(cat "$DEST/VERSION")}"
need npm "It comes with Node.js."
need python3 "Install Python 3."
python3 -c 'import yaml' 2>/dev/null || die "python3 has no yaml module: pip install pyyaml"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
step "fetching uap-core $VERSION from the npm registry"
(cd "$work" && npm pack --silent "uap-core@$VERSION" >/dev/null && tar xzf "uap-core-$VERSION.tgz")

step "converting regexes.yaml to JSON"
python3 - "$work/package/regexes.yaml" "$DEST/regexes.json" <<'PY'
import json, sys, yaml
with open(sys.argv[1], encoding="utf-8") as f:
    rules = yaml.safe_load(f)
for section in ("user_agent_parsers", "os_parsers", "device_parsers"):
    if not rules.get(section):
        sys.exit(f"regexes.yaml has no {section}")
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(rules, f, ensure_ascii=False, indent=0, sort_keys=True)
    f.write("\n")
print(", ".join(f"{len(rules[s])} {s}" for s in ("user_agent_parsers", "os_parsers", "device_parsers")))
PY
cp "$work/package/LICENSE" "$DEST/LICENSE"
echo "$VERSION" >"$DEST/VERSION"
note "wrote $DEST/regexes.json (uap-core $VERSION)"
