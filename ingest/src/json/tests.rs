use super::*;
use proptest::prelude::*;

fn scalar(text: &str, replaced: usize) -> Value<'_> {
    Value::Scalar(Text {
        text: Cow::Borrowed(text),
        replaced,
        not_utf8: false,
    })
}

fn key(text: &str) -> Text<'_> {
    Text {
        text: Cow::Borrowed(text),
        replaced: 0,
        not_utf8: false,
    }
}

/// The members of a body's one event, owned (the body is read inside).
fn only_event(body: &str) -> Vec<(Text<'static>, Value<'static>)> {
    let body = Body::new(body.as_bytes());
    let events = body.events().unwrap();
    assert_eq!(events.len(), 1);
    owned(body.members(events[0]).unwrap())
}

fn owned(members: Members<'_>) -> Vec<(Text<'static>, Value<'static>)> {
    let text = |t: Text<'_>| Text {
        text: Cow::Owned(t.text.into_owned()),
        replaced: t.replaced,
        not_utf8: t.not_utf8,
    };
    members
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Null => Value::Null,
                Value::Scalar(t) => Value::Scalar(text(t)),
                // Leaked: test bodies are tiny, and the text must outlive the body.
                Value::Object(o) => Value::Object(Box::leak(o.to_owned().into_boxed_str())),
                Value::Array => Value::Array,
            };
            (text(k), v)
        })
        .collect()
}

fn events_of(body: &[u8]) -> Result<usize, String> {
    Body::new(body).events().map(|e| e.len())
}

#[test]
fn members_come_in_the_order_sent_with_repeats() {
    let m = only_event(r#"{"zeta":"1","alpha":"2","zeta":"3","e":"x"}"#);
    let names: Vec<_> = m.iter().map(|(k, _)| k.text.as_ref()).collect();
    assert_eq!(names, ["zeta", "alpha", "zeta", "e"]);
    assert_eq!(m[2].1, scalar("3", 0));
}

#[test]
fn numbers_are_the_text_sent() {
    let m = only_event(
        r#"{"uid":123456789012345678901234,"value":1e400,"small":-0.5,"exp":1E-7,"ok":true,"no":false}"#,
    );
    let texts: Vec<_> = m
        .iter()
        .map(|(_, v)| match v {
            Value::Scalar(t) => t.text.as_ref(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        [
            "123456789012345678901234",
            "1e400",
            "-0.5",
            "1E-7",
            "true",
            "false"
        ]
    );
}

#[test]
fn a_lone_surrogate_becomes_one_replacement_character() {
    let m = only_event(r#"{"title":"caf\ud83d","t2":"\udc00x\ud83d\ude00","k\ud800":"v"}"#);
    assert_eq!(m[0].1, scalar("caf\u{FFFD}", 1));
    assert_eq!(m[1].1, scalar("\u{FFFD}x😀", 1), "a pair is kept whole");
    assert_eq!(m[2].0.text, "k\u{FFFD}");
    assert_eq!(m[2].0.replaced, 1, "in names too");
    let m = only_event(r#"{"a":"\ud83d\ud83d","b":"tab\tand \"quote\" \u00e9"}"#);
    assert_eq!(m[0].1, scalar("\u{FFFD}\u{FFFD}", 2));
    assert_eq!(m[1].1, scalar("tab\tand \"quote\" é", 0));
}

/// Bytes that are not UTF-8 inside a string mark that string (its member is then cut, as a
/// query parameter that does not decode is); the rest of the body is read as sent.
#[test]
fn bytes_that_are_not_utf8_mark_their_string_only() {
    let body = Body::new(
        b"{\"title\":\"caf\xC3\xA9\",\"bad\":\"x\xFF\xFEy\",\"k\xC3\":1,\"after\":\"ok\"}",
    );
    let events = body.events().unwrap();
    let m = body.members(events[0]).unwrap();
    let marks: Vec<_> = m
        .iter()
        .map(|(k, v)| {
            let value_bad = matches!(v, Value::Scalar(t) if t.not_utf8);
            (k.text.as_ref(), k.not_utf8, value_bad)
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("title", false, false),
            ("bad", false, true),
            ("k\u{FFFD}", true, false),
            ("after", false, false)
        ]
    );
    assert_eq!(m[0].1, scalar("café", 0));

    // Many members and many bad bytes: each member is told by its own bytes only.
    let mut bytes = b"{".to_vec();
    for i in 0..300 {
        let bad = i % 3 == 0;
        bytes.extend(format!("\"m{i}\":\"").bytes());
        bytes.extend(if bad { &b"\xFF\xFE"[..] } else { b"ok" });
        bytes.extend(b"\",");
    }
    bytes.extend(b"\"end\":1}");
    let body = Body::new(&bytes);
    let events = body.events().unwrap();
    let m = body.members(events[0]).unwrap();
    for (i, (k, v)) in m.iter().take(300).enumerate() {
        let marked = matches!(v, Value::Scalar(t) if t.not_utf8);
        assert_eq!(marked, i % 3 == 0, "{}", k.text);
        assert!(!k.not_utf8);
    }
}

#[test]
fn other_values_are_told_apart() {
    let m = only_event(r#"{"n":null,"o":{"a":1},"l":[1,{"b":2}],"s":""}"#);
    assert_eq!(m[0].1, Value::Null);
    let Value::Object(raw) = m[1].1 else {
        panic!("{:?}", m[1].1)
    };
    let body = Body::new(raw.as_bytes());
    assert_eq!(body.members(raw).unwrap(), vec![(key("a"), scalar("1", 0))]);
    assert_eq!(m[2].1, Value::Array);
    assert_eq!(m[3].1, scalar("", 0));
}

#[test]
fn arrays_give_each_element_and_non_objects_are_marked() {
    let body = Body::new(br#" [ {"site":"a"} , 7, "text", {"site":"b"}, [] ] "#);
    let events = body.events().unwrap();
    let read: Vec<_> = events
        .iter()
        .map(|e| body.members(e).map(|m| m.len()))
        .collect();
    assert_eq!(read, [Some(1), None, None, Some(1), None]);
}

#[test]
fn what_is_not_json_is_refused_whole() {
    for body in [
        &b"{not json"[..],
        b"\"text\"",
        b"42",
        b"",
        b"[{\"site\":\"a\"},{\"site\":",
        b"{\"a\":1} {\"b\":2}",
        b"{\"title\":1\xFF}",
        b"\xFF{\"title\":1}",
    ] {
        assert!(
            events_of(body).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

/// serde_json skips a value it is not asked to read without recursing, so nesting costs no
/// stack: a deep array is one element that is not an object, a deep member one array.
#[test]
fn deep_nesting_is_read_without_recursion() {
    let depth = 100_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = Body::new(deep.as_bytes());
    let events = body.events().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(body.members(events[0]), None);
    let body = format!(r#"{{"site":"s","x":{deep}}}"#);
    assert_eq!(only_event(&body)[1].1, Value::Array);
}

proptest! {
    /// Whatever a well-formed JSON string holds is read back exactly, with nothing replaced.
    #[test]
    fn strings_read_back_exactly(s in any::<String>()) {
        let body = format!("{{{}:{}}}", serde_json::to_string(&s).unwrap(), serde_json::to_string(&s).unwrap());
        let m = only_event(&body);
        prop_assert_eq!(m[0].0.text.as_ref(), s.as_str());
        prop_assert_eq!(&m[0].1, &scalar(&s, 0));
    }

    /// Any bytes at all get an answer, never a panic.
    #[test]
    fn any_body_is_read_or_refused(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let body = Body::new(&body);
        if let Ok(events) = body.events() {
            for e in events {
                let _ = body.members(e);
            }
        }
    }
}
