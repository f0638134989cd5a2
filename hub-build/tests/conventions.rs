//! Hub definitions that break a convention fail codegen with `Error::Convention`,
//! naming the proto element, before any code is generated.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use hub_build::Error;

const SERVICE: &str =
    "service FooHub { rpc Connect(stream FooRequest) returns (stream FooResponse); }";
const REQUEST_HEAD: &str = "uint64 id = 1; hub.v1.ClientControl control = 15;";
const RESPONSE_HEAD: &str =
    "uint64 id = 1; uint64 seq = 2; hub.v1.CallError error = 3; hub.v1.ServerControl control = 15;";

/// A hub file: the service, request and response bodies as given, plus `Bar`.
fn hub(service: &str, request: &str, response: &str) -> String {
    format!(
        "syntax = \"proto3\";\npackage t.v1;\nimport \"google/protobuf/empty.proto\";\n\
         import \"google/protobuf/timestamp.proto\";\nimport \"hub/v1/hub.proto\";\n\
         {service}\nmessage FooRequest {{ {request} }}\nmessage FooResponse {{ {response} }}\n\
         message Bar {{ string x = 1; }}\nenum Color {{ COLOR_NONE = 0; }}\n"
    )
}

/// A valid hub, with `calls` in the request's oneof and `events` in the response's.
fn with_cases(calls: &str, events: &str) -> String {
    hub(
        SERVICE,
        &format!("{REQUEST_HEAD} oneof call {{ {calls} }}"),
        &format!("{RESPONSE_HEAD} oneof event {{ {events} }}"),
    )
}

fn generate(source: &str) -> Result<Vec<(String, String)>, Error> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file: PathBuf = dir.path().join("t/v1/foo.proto");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, source).expect("write");
    hub_build::generate_hub_code(&[&file], &[dir.path()])
}

/// Checks that `source` fails on `element` with a message containing `says`.
#[track_caller]
fn fails(source: &str, element: &str, says: &str) {
    match generate(source) {
        Err(Error::Convention {
            element: e,
            message,
        }) => {
            assert_eq!(e, element, "wrong element; message: {message}");
            assert!(
                message.contains(says),
                "{element}: {message:?} does not say {says:?}"
            );
            let shown = Error::Convention {
                element: e,
                message,
            }
            .to_string();
            assert!(shown.contains(element), "{shown}");
        }
        Err(other) => panic!("expected a convention error on {element}, got {other}"),
        Ok(_) => {
            panic!("expected a convention error on {element}, but codegen succeeded:\n{source}")
        }
    }
}

#[test]
fn the_base_hub_is_valid() {
    let hubs = generate(&with_cases(
        "Bar bar = 16; google.protobuf.Empty baz = 17;",
        "Bar bar = 16; google.protobuf.Empty baz = 17; Bar on_bar = 100; google.protobuf.Empty on_tick = 101;",
    ))
    .expect("valid");
    assert_eq!(hubs.len(), 1);
    assert_eq!(hubs[0].0, "t.v1");
    assert!(hubs[0].1.contains("pub trait FooHub"));
}

#[test]
fn the_service_must_have_one_bidi_connect_method() {
    let req = &format!("{REQUEST_HEAD} oneof call {{ Bar bar = 16; }}");
    let resp = &format!("{RESPONSE_HEAD} oneof event {{ Bar bar = 16; }}");
    let two = "service FooHub { rpc Connect(stream FooRequest) returns (stream FooResponse);\n\
               rpc Other(stream FooRequest) returns (stream FooResponse); }";
    fails(&hub(two, req, resp), "t.v1.FooHub", "exactly one method");
    fails(
        &hub("service FooHub {}", req, resp),
        "t.v1.FooHub",
        "found 0 methods",
    );
    for not_bidi in [
        "service FooHub { rpc Connect(FooRequest) returns (stream FooResponse); }",
        "service FooHub { rpc Connect(stream FooRequest) returns (FooResponse); }",
        "service FooHub { rpc Connect(FooRequest) returns (FooResponse); }",
    ] {
        fails(
            &hub(not_bidi, req, resp),
            "t.v1.FooHub.Connect",
            "stream FooRequest",
        );
    }
    let renamed = "service FooHub { rpc Open(stream FooRequest) returns (stream FooResponse); }";
    fails(&hub(renamed, req, resp), "t.v1.FooHub.Open", "rpc Connect");
}

#[test]
fn framework_fields_must_be_there_with_their_types_and_numbers() {
    let calls = "oneof call { Bar bar = 16; }";
    let events = "oneof event { Bar bar = 16; }";
    let resp = &format!("{RESPONSE_HEAD} {events}");
    let req = &format!("{REQUEST_HEAD} {calls}");
    // The request.
    let missing_id = hub(
        SERVICE,
        &format!("hub.v1.ClientControl control = 15; {calls}"),
        resp,
    );
    fails(
        &missing_id,
        "t.v1.FooRequest",
        "missing field `uint64 id = 1;`",
    );
    let string_id = hub(
        SERVICE,
        &format!("string id = 1; hub.v1.ClientControl control = 15; {calls}"),
        resp,
    );
    fails(&string_id, "t.v1.FooRequest.id", "must be `uint64 id = 1;`");
    let id_4 = hub(
        SERVICE,
        &format!("uint64 id = 4; hub.v1.ClientControl control = 15; {calls}"),
        resp,
    );
    fails(&id_4, "t.v1.FooRequest.id", "must be `uint64 id = 1;`");
    let repeated_id = hub(
        SERVICE,
        &format!("repeated uint64 id = 1; hub.v1.ClientControl control = 15; {calls}"),
        resp,
    );
    fails(&repeated_id, "t.v1.FooRequest.id", "must be");
    let no_control = hub(SERVICE, &format!("uint64 id = 1; {calls}"), resp);
    fails(
        &no_control,
        "t.v1.FooRequest",
        "hub.v1.ClientControl control = 15",
    );
    let server_control = hub(
        SERVICE,
        &format!("uint64 id = 1; hub.v1.ServerControl control = 15; {calls}"),
        resp,
    );
    fails(
        &server_control,
        "t.v1.FooRequest.control",
        "hub.v1.ClientControl",
    );
    // The response.
    let no_seq = hub(
        SERVICE,
        req,
        &format!(
            "uint64 id = 1; hub.v1.CallError error = 3; hub.v1.ServerControl control = 15; {events}"
        ),
    );
    fails(&no_seq, "t.v1.FooResponse", "uint64 seq = 2");
    let bad_error = hub(
        SERVICE,
        req,
        &format!(
            "uint64 id = 1; uint64 seq = 2; Bar error = 3; hub.v1.ServerControl control = 15; {events}"
        ),
    );
    fails(
        &bad_error,
        "t.v1.FooResponse.error",
        "hub.v1.CallError error = 3",
    );
    let no_control = hub(
        SERVICE,
        req,
        &format!("uint64 id = 1; uint64 seq = 2; hub.v1.CallError error = 3; {events}"),
    );
    fails(
        &no_control,
        "t.v1.FooResponse",
        "hub.v1.ServerControl control = 15",
    );
}

#[test]
fn frames_hold_only_the_framework_fields_and_the_oneof() {
    let extra = hub(
        SERVICE,
        &format!("{REQUEST_HEAD} string extra = 4; oneof call {{ Bar bar = 16; }}"),
        &format!("{RESPONSE_HEAD} oneof event {{ Bar bar = 16; }}"),
    );
    fails(&extra, "t.v1.FooRequest.extra", "only the framework fields");
    let extra = hub(
        SERVICE,
        &format!("{REQUEST_HEAD} oneof call {{ Bar bar = 16; }}"),
        &format!("{RESPONSE_HEAD} Bar bar_outside = 50; oneof event {{ Bar bar = 16; }}"),
    );
    fails(
        &extra,
        "t.v1.FooResponse.bar_outside",
        "only the framework fields",
    );
    let no_oneof = hub(
        SERVICE,
        REQUEST_HEAD,
        &format!("{RESPONSE_HEAD} oneof event {{ Bar bar = 16; }}"),
    );
    fails(&no_oneof, "t.v1.FooRequest", "missing `oneof call");
    let wrong_name = hub(
        SERVICE,
        &format!("{REQUEST_HEAD} oneof calls {{ Bar bar = 16; }}"),
        &format!("{RESPONSE_HEAD} oneof event {{ Bar bar = 16; }}"),
    );
    fails(&wrong_name, "t.v1.FooRequest", "missing `oneof call");
    let no_event = hub(
        SERVICE,
        &format!("{REQUEST_HEAD} oneof call {{ Bar bar = 16; }}"),
        RESPONSE_HEAD,
    );
    fails(&no_event, "t.v1.FooResponse", "missing `oneof event");
}

#[test]
fn each_call_needs_a_reply_case_with_its_name_and_number() {
    fails(
        &with_cases("Bar bar = 16; Bar baz = 17;", "Bar bar = 16;"),
        "t.v1.FooRequest.call.baz",
        "no reply case `baz`",
    );
    fails(
        &with_cases("Bar bar = 16;", "Bar bar = 17;"),
        "t.v1.FooResponse.event.bar",
        "field number 16 (found 17)",
    );
}

#[test]
fn push_cases_are_named_on_something() {
    fails(
        &with_cases("Bar bar = 16;", "Bar bar = 16; Bar extra = 100;"),
        "t.v1.FooResponse.event.extra",
        "push cases are named `on_*`",
    );
    fails(
        &with_cases(
            "Bar bar = 16; Bar on_bar = 17;",
            "Bar bar = 16; Bar on_bar = 17;",
        ),
        "t.v1.FooRequest.call.on_bar",
        "must not start with `on_`",
    );
}

#[test]
fn cases_must_be_messages() {
    fails(
        &with_cases("string bar = 16;", "Bar bar = 16;"),
        "t.v1.FooRequest.call.bar",
        "must be a message",
    );
    fails(
        &with_cases("Bar bar = 16;", "uint32 bar = 16;"),
        "t.v1.FooResponse.event.bar",
        "must be a message",
    );
    fails(
        &with_cases("Bar bar = 16;", "Bar bar = 16; Color on_color = 100;"),
        "t.v1.FooResponse.event.on_color",
        "must be a message",
    );
    fails(
        &with_cases("google.protobuf.Timestamp bar = 16;", "Bar bar = 16;"),
        "t.v1.FooRequest.call.bar",
        "google.protobuf.Timestamp cannot be a case type",
    );
}

#[test]
fn case_numbers_below_16_belong_to_the_framework() {
    fails(
        &with_cases("Bar bar = 16; Bar baz = 5;", "Bar bar = 16; Bar baz = 5;"),
        "t.v1.FooRequest.call.baz",
        "reserved for the framework",
    );
    fails(
        &with_cases("Bar bar = 16;", "Bar bar = 16; Bar on_bar = 14;"),
        "t.v1.FooResponse.event.on_bar",
        "reserved for the framework",
    );
}

#[test]
fn names_the_generated_code_uses_are_refused() {
    // Client methods.
    for name in [
        "connect",
        "connect_with",
        "raw",
        "closed",
        "latency",
        "connection_id",
    ] {
        fails(
            &with_cases(&format!("Bar {name} = 16;"), &format!("Bar {name} = 16;")),
            &format!("t.v1.FooRequest.call.{name}"),
            "reserved",
        );
    }
    // Rust keywords.
    for name in ["type", "match", "async", "gen"] {
        fails(
            &with_cases(&format!("Bar {name} = 16;"), &format!("Bar {name} = 16;")),
            &format!("t.v1.FooRequest.call.{name}"),
            "reserved",
        );
    }
    // Receiver and server hooks.
    for name in ["on_connect", "on_disconnect", "on_error", "on_seq"] {
        fails(
            &with_cases("Bar bar = 16;", &format!("Bar bar = 16; Bar {name} = 100;")),
            &format!("t.v1.FooResponse.event.{name}"),
            "reserved",
        );
    }
    // `send_bar` is the generated fire-and-forget method of `bar`.
    fails(
        &with_cases(
            "Bar bar = 16; Bar send_bar = 17;",
            "Bar bar = 16; Bar send_bar = 17;",
        ),
        "t.v1.FooRequest.call.send_bar",
        "send_bar",
    );
}

#[test]
fn a_proto_that_does_not_compile_is_a_protox_error() {
    let broken = "syntax = \"proto3\";\npackage t.v1;\nmessage Broken { NoSuchType x = 1; }\n";
    assert!(matches!(generate(broken), Err(Error::Protox(_))));
}

#[test]
fn files_without_services_generate_nothing() {
    let plain = "syntax = \"proto3\";\npackage t.v1;\nmessage Plain { string x = 1; }\n";
    assert!(generate(plain).expect("valid").is_empty());
}

/// A hub with `answers` in the request's `oneof answer` and `events` in the response's.
fn with_answers(answers: &str, events: &str) -> String {
    hub(
        SERVICE,
        &format!("{REQUEST_HEAD} oneof call {{ Bar bar = 16; }} oneof answer {{ {answers} }}"),
        &format!("{RESPONSE_HEAD} oneof event {{ Bar bar = 16; {events} }}"),
    )
}

#[test]
fn asks_pair_an_answer_case_with_an_event_case() {
    let hubs = generate(&with_answers(
        "Bar confirm = 200; google.protobuf.Empty ping_back = 201;",
        "Bar confirm = 200; Bar ping_back = 201; Bar on_bar = 100;",
    ))
    .expect("valid");
    let code = &hubs[0].1;
    assert!(code.contains("pub async fn confirm"), "{code}");
    assert!(code.contains("fn ping_back"), "{code}");
    assert!(
        code.contains("type Answer = super::foo_request::Answer"),
        "{code}"
    );
    // No ask case for the answer.
    fails(
        &with_answers("Bar confirm = 200;", "Bar on_bar = 100;"),
        "t.v1.FooRequest.answer.confirm",
        "no ask case `confirm`",
    );
    // Another number.
    fails(
        &with_answers("Bar confirm = 200;", "Bar confirm = 201;"),
        "t.v1.FooResponse.event.confirm",
        "field number 200",
    );
    // Named like a push.
    fails(
        &with_answers("Bar on_confirm = 200;", "Bar on_confirm = 200;"),
        "t.v1.FooRequest.answer.on_confirm",
        "must not start with `on_`",
    );
    // A scalar answer.
    fails(
        &with_answers("string confirm = 200;", "Bar confirm = 200;"),
        "t.v1.FooRequest.answer.confirm",
        "must be a message",
    );
    // An answer field number of the framework.
    fails(
        &with_answers("Bar confirm = 14;", "Bar confirm = 14;"),
        "t.v1.FooRequest.answer.confirm",
        "reserved for the framework",
    );
}
