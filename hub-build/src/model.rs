//! Reads hub services out of a descriptor set and checks the conventions.

use std::collections::HashMap;

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

use crate::Error;

/// One hub, as the generator sees it.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The proto package, e.g. `chat.v1`.
    pub package: String,
    /// The service name, e.g. `ChatHub`.
    pub name: String,
    /// Comment lines of the service.
    pub doc: Vec<String>,
    /// Rust path (from a module inside the package module) of the request message.
    pub request: String,
    /// Rust path of the request's `oneof call` enum.
    pub call_enum: String,
    /// Rust path of the response message.
    pub response: String,
    /// Rust path of the response's `oneof event` enum.
    pub event_enum: String,
    /// The calls.
    pub calls: Vec<Call>,
    /// The push cases.
    pub pushes: Vec<PushCase>,
    /// The asks: response cases the client answers (paired by name and number with a
    /// case of the request's `oneof answer`).
    pub asks: Vec<AskCase>,
    /// Rust path of the request's `oneof answer` enum, if the hub has asks.
    pub answer_enum: Option<String>,
}

impl Hub {
    /// `chat.v1.ChatHub`.
    pub fn full_name(&self) -> String {
        if self.package.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.package, self.name)
        }
    }
}

/// One call of a hub.
#[derive(Debug, Clone)]
pub struct Call {
    /// The oneof case name, e.g. `join`.
    pub name: String,
    /// The Rust enum variant, e.g. `Join`.
    pub variant: String,
    /// Rust path of the argument, `None` for `google.protobuf.Empty`.
    pub request: Option<String>,
    /// Rust path of the reply, `None` for `google.protobuf.Empty`.
    pub reply: Option<String>,
    /// Comment lines.
    pub doc: Vec<String>,
}

/// One push case of a hub.
#[derive(Debug, Clone)]
pub struct PushCase {
    /// The oneof case name, e.g. `on_message`.
    pub name: String,
    /// The Rust enum variant, e.g. `OnMessage`.
    pub variant: String,
    /// Rust path of the payload, `None` for `google.protobuf.Empty`.
    pub message: Option<String>,
    /// Comment lines.
    pub doc: Vec<String>,
}

/// One ask of a hub: the server asks, the client answers.
#[derive(Debug, Clone)]
pub struct AskCase {
    /// The case name, e.g. `ready_check` (the same in the response and the answer oneof).
    pub name: String,
    /// The Rust enum variant, e.g. `ReadyCheck`.
    pub variant: String,
    /// Rust path of what the server sends, `None` for `google.protobuf.Empty`.
    pub message: Option<String>,
    /// Rust path of the answer, `None` for `google.protobuf.Empty`.
    pub answer: Option<String>,
    /// Comment lines.
    pub doc: Vec<String>,
}

/// Names generated code defines on the server, client or push types; calls and pushes may not take them.
const RESERVED: &[&str] = &[
    "connect",
    "connect_with",
    "on_connect",
    "on_disconnect",
    "on_members_lost",
    "new",
    "builder",
    "handle",
    "except",
    "only",
    "closed",
    "is_closed",
    "latency",
    "info",
    "connection_id",
    "raw",
    "with_timeout",
    "ask_timeout",
    "ask_frame",
    "on_error",
    "on_seq",
    "on_connection_state",
    "on_pushes_lost",
    "send_frame",
    "from_arc",
    "clone",
];

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod",
    "move", "mut", "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true",
    "type", "unsafe", "use", "where", "while", "yield", "abstract", "become", "do", "final",
    "macro", "override", "priv", "try", "typeof", "unsized", "virtual",
];

struct MsgInfo<'a> {
    package: String,
    /// Enclosing message names, outermost first, then the message's own name.
    path: Vec<String>,
    desc: &'a DescriptorProto,
    file: &'a FileDescriptorProto,
    /// The source-info path of the message in its file.
    loc: Vec<i32>,
}

fn err(element: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Convention {
        element: element.into(),
        message: message.into(),
    }
}

/// Finds and checks every hub in the `targets` files.
pub(crate) fn hubs(fds: &FileDescriptorSet, targets: &[String]) -> Result<Vec<Hub>, Error> {
    let mut messages = HashMap::new();
    for file in &fds.file {
        let package = file.package().to_owned();
        for (i, m) in file.message_type.iter().enumerate() {
            index(&mut messages, file, &package, &[], m, vec![4, i as i32]);
        }
    }
    let mut out = Vec::new();
    for file in fds
        .file
        .iter()
        .filter(|f| targets.iter().any(|t| t == f.name()))
    {
        for (si, service) in file.service.iter().enumerate() {
            out.push(hub(file, si, service, &messages)?);
        }
    }
    Ok(out)
}

fn index<'a>(
    map: &mut HashMap<String, MsgInfo<'a>>,
    file: &'a FileDescriptorProto,
    package: &str,
    parents: &[String],
    m: &'a DescriptorProto,
    loc: Vec<i32>,
) {
    let mut path = parents.to_vec();
    path.push(m.name().to_owned());
    let full = if package.is_empty() {
        format!(".{}", path.join("."))
    } else {
        format!(".{package}.{}", path.join("."))
    };
    for (i, nested) in m.nested_type.iter().enumerate() {
        let mut l = loc.clone();
        l.extend([3, i as i32]);
        index(map, file, package, &path, nested, l);
    }
    map.insert(
        full,
        MsgInfo {
            package: package.to_owned(),
            path,
            desc: m,
            file,
            loc,
        },
    );
}

fn doc(file: &FileDescriptorProto, path: &[i32]) -> Vec<String> {
    let Some(info) = &file.source_code_info else {
        return Vec::new();
    };
    info.location
        .iter()
        .find(|l| l.path == path)
        .and_then(|l| {
            l.leading_comments
                .as_deref()
                .or(l.trailing_comments.as_deref())
        })
        .map(|c| {
            c.lines()
                .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The Rust path of a message, seen from a module one level inside package `from`.
fn rust_path(info: &MsgInfo<'_>, from: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    if info.package == from {
        parts.push("super".into());
    } else {
        let depth = if from.is_empty() {
            0
        } else {
            from.split('.').count()
        };
        parts.extend(std::iter::repeat_n("super".to_owned(), depth + 1));
        parts.extend(
            info.package
                .split('.')
                .filter(|s| !s.is_empty())
                .map(|s| s.to_snake_case()),
        );
    }
    let (name, outer) = info.path.split_last().expect("a message has a name");
    parts.extend(outer.iter().map(|o| o.to_snake_case()));
    parts.push(name.to_upper_camel_case());
    parts.join("::")
}

/// The Rust path of the module holding a message's oneofs and nested types.
fn rust_module(info: &MsgInfo<'_>, from: &str) -> String {
    let path = rust_path(info, from);
    let (prefix, name) = path.rsplit_once("::").expect("path has a prefix");
    format!("{prefix}::{}", name.to_snake_case())
}

fn hub(
    file: &FileDescriptorProto,
    si: usize,
    service: &prost_types::ServiceDescriptorProto,
    messages: &HashMap<String, MsgInfo<'_>>,
) -> Result<Hub, Error> {
    let package = file.package().to_owned();
    let full = if package.is_empty() {
        service.name().to_owned()
    } else {
        format!("{package}.{}", service.name())
    };
    let shape = "a hub service has exactly one method: `rpc Connect(stream FooRequest) returns (stream FooResponse);`";
    let [method] = service.method.as_slice() else {
        return Err(err(
            &full,
            format!("{shape} (found {} methods)", service.method.len()),
        ));
    };
    let m_el = format!("{full}.{}", method.name());
    if method.name() != "Connect" || !method.client_streaming() || !method.server_streaming() {
        return Err(err(m_el, shape));
    }
    let lookup = |ty: &str, el: &str| {
        messages
            .get(ty)
            .ok_or_else(|| err(el, format!("message type {ty} not found")))
    };
    let req = lookup(method.input_type(), &m_el)?;
    let resp = lookup(method.output_type(), &m_el)?;
    let req_el = method.input_type().trim_start_matches('.').to_owned();
    let resp_el = method.output_type().trim_start_matches('.').to_owned();

    expect_field(req, &req_el, "id", 1, Type::Uint64, None)?;
    expect_field(
        req,
        &req_el,
        "control",
        15,
        Type::Message,
        Some(".hub.v1.ClientControl"),
    )?;
    expect_field(resp, &resp_el, "id", 1, Type::Uint64, None)?;
    expect_field(resp, &resp_el, "seq", 2, Type::Uint64, None)?;
    expect_field(
        resp,
        &resp_el,
        "error",
        3,
        Type::Message,
        Some(".hub.v1.CallError"),
    )?;
    expect_field(
        resp,
        &resp_el,
        "control",
        15,
        Type::Message,
        Some(".hub.v1.ServerControl"),
    )?;

    // The optional `oneof answer`: its fields are framework-checked below, not calls.
    let answer_fields: Vec<String> = match req
        .desc
        .oneof_decl
        .iter()
        .position(|o| o.name() == "answer")
    {
        Some(idx) => req
            .desc
            .field
            .iter()
            .filter(|f| f.oneof_index == Some(idx as i32))
            .map(|f| f.name().to_owned())
            .collect(),
        None => Vec::new(),
    };
    let mut req_framework = vec!["id", "control"];
    req_framework.extend(answer_fields.iter().map(String::as_str));
    let req_cases = oneof_cases(req, &req_el, "call", &req_framework)?;
    let answer_cases = if answer_fields.is_empty() {
        Vec::new()
    } else {
        let mut allowed = vec!["id", "control"];
        allowed.extend(req_cases.iter().map(|(_, f)| f.name()));
        oneof_cases(req, &req_el, "answer", &allowed)?
    };
    let resp_cases = oneof_cases(resp, &resp_el, "event", &["id", "seq", "error", "control"])?;

    let payload = |f: &FieldDescriptorProto,
                   el: &str|
     -> Result<(Option<String>, Vec<String>), Error> {
        if f.r#type() != Type::Message {
            return Err(err(
                el,
                "a call, reply or push case must be a message (use google.protobuf.Empty for none)",
            ));
        }
        if f.type_name() == ".google.protobuf.Empty" {
            return Ok((None, Vec::new()));
        }
        if f.type_name().starts_with(".google.protobuf.") {
            return Err(err(
                el,
                format!(
                    "{} cannot be a case type: wrap it in a message of your own (only google.protobuf.Empty is allowed)",
                    f.type_name()
                ),
            ));
        }
        let info = lookup(f.type_name(), el)?;
        Ok((Some(rust_path(info, &package)), Vec::new()))
    };
    let check_name = |name: &str, el: &str| -> Result<(), Error> {
        if RUST_KEYWORDS.contains(&name) || RESERVED.contains(&name) {
            return Err(err(
                el,
                format!(
                    "`{name}` is reserved (a Rust keyword or a generated method name); rename the case"
                ),
            ));
        }
        Ok(())
    };

    let mut calls = Vec::new();
    for (i, f) in &req_cases {
        let el = format!("{req_el}.call.{}", f.name());
        if f.name().starts_with("on_") {
            return Err(err(
                el,
                "call names must not start with `on_` (that prefix marks pushes)",
            ));
        }
        check_name(f.name(), &el)?;
        let (request, _) = payload(f, &el)?;
        let Some((_, r)) = resp_cases.iter().find(|(_, r)| r.name() == f.name()) else {
            return Err(err(
                &el,
                format!(
                    "no reply case `{}` in {resp_el}.event: every call needs a reply case with the same name and number",
                    f.name()
                ),
            ));
        };
        let r_el = format!("{resp_el}.event.{}", r.name());
        if r.number() != f.number() {
            return Err(err(
                r_el,
                format!(
                    "the reply case must have the call's field number {} (found {})",
                    f.number(),
                    r.number()
                ),
            ));
        }
        let (reply, _) = payload(r, &r_el)?;
        let mut loc = req.loc.clone();
        loc.extend([2, *i as i32]);
        calls.push(Call {
            name: f.name().to_owned(),
            variant: f.name().to_upper_camel_case(),
            request,
            reply,
            doc: doc(req.file, &loc),
        });
    }
    if calls.is_empty() {
        return Err(err(
            format!("{req_el}.call"),
            "a hub needs at least one call",
        ));
    }
    // Each call `x` also gets a client method `send_x` (fire-and-forget).
    for c in &calls {
        if let Some(base) = c.name.strip_prefix("send_")
            && calls.iter().any(|o| o.name == base)
        {
            return Err(err(
                format!("{req_el}.call.{}", c.name),
                format!(
                    "`{}` clashes with the client method `send_{base}` generated for the call `{base}`; rename one of them",
                    c.name
                ),
            ));
        }
    }
    let mut asks = Vec::new();
    for (i, a) in &answer_cases {
        let a_el = format!("{req_el}.answer.{}", a.name());
        if a.name().starts_with("on_") {
            return Err(err(
                a_el,
                "ask names must not start with `on_` (that prefix marks pushes)",
            ));
        }
        check_name(a.name(), &a_el)?;
        let (answer, _) = payload(a, &a_el)?;
        let Some((ri, r)) = resp_cases.iter().find(|(_, r)| r.name() == a.name()) else {
            return Err(err(
                &a_el,
                format!(
                    "no ask case `{}` in {resp_el}.event: every answer case needs an ask case with the same name and number",
                    a.name()
                ),
            ));
        };
        let r_el = format!("{resp_el}.event.{}", r.name());
        if r.number() != a.number() {
            return Err(err(
                r_el,
                format!(
                    "the ask case must have its answer case's field number {} (found {})",
                    a.number(),
                    r.number()
                ),
            ));
        }
        let (message, _) = payload(r, &r_el)?;
        let mut loc = resp.loc.clone();
        loc.extend([2, *ri as i32]);
        let mut doc = doc(resp.file, &loc);
        if doc.is_empty() {
            let mut l = req.loc.clone();
            l.extend([2, *i as i32]);
            doc = self::doc(req.file, &l);
        }
        asks.push(AskCase {
            name: a.name().to_owned(),
            variant: a.name().to_upper_camel_case(),
            message,
            answer,
            doc,
        });
    }
    let mut pushes = Vec::new();
    for (i, f) in &resp_cases {
        if calls.iter().any(|c| c.name == f.name()) || asks.iter().any(|a| a.name == f.name()) {
            continue;
        }
        let el = format!("{resp_el}.event.{}", f.name());
        if !f.name().starts_with("on_") {
            return Err(err(
                el,
                "neither a reply (no call has this name) nor a push: push cases are named `on_*`",
            ));
        }
        check_name(f.name(), &el)?;
        let (message, _) = payload(f, &el)?;
        let mut loc = resp.loc.clone();
        loc.extend([2, *i as i32]);
        pushes.push(PushCase {
            name: f.name().to_owned(),
            variant: f.name().to_upper_camel_case(),
            message,
            doc: doc(resp.file, &loc),
        });
    }
    Ok(Hub {
        package: package.clone(),
        name: service.name().to_owned(),
        doc: doc(file, &[6, si as i32]),
        request: rust_path(req, &package),
        call_enum: format!("{}::Call", rust_module(req, &package)),
        response: rust_path(resp, &package),
        event_enum: format!("{}::Event", rust_module(resp, &package)),
        calls,
        pushes,
        answer_enum: (!asks.is_empty()).then(|| format!("{}::Answer", rust_module(req, &package))),
        asks,
    })
}

fn expect_field(
    msg: &MsgInfo<'_>,
    el: &str,
    name: &str,
    number: i32,
    ty: Type,
    type_name: Option<&str>,
) -> Result<(), Error> {
    let want = match type_name {
        Some(t) => format!("`{} {name} = {number};`", t.trim_start_matches('.')),
        None => format!("`uint64 {name} = {number};`"),
    };
    let Some(f) = msg.desc.field.iter().find(|f| f.name() == name) else {
        return Err(err(el, format!("missing field {want}")));
    };
    let ok = f.number() == number
        && f.r#type() == ty
        && f.label() != Label::Repeated
        && f.oneof_index.is_none()
        && type_name.is_none_or(|t| f.type_name() == t);
    if !ok {
        return Err(err(format!("{el}.{name}"), format!("must be {want}")));
    }
    Ok(())
}

/// The fields of the oneof `oneof` (with their index in the message), after checking
/// that the message has no other fields than `framework` ones and the oneof's.
fn oneof_cases<'a>(
    msg: &'a MsgInfo<'_>,
    el: &str,
    oneof: &str,
    framework: &[&str],
) -> Result<Vec<(usize, &'a FieldDescriptorProto)>, Error> {
    let Some(idx) = msg.desc.oneof_decl.iter().position(|o| o.name() == oneof) else {
        return Err(err(el, format!("missing `oneof {oneof} {{ ... }}`")));
    };
    let mut cases = Vec::new();
    for (i, f) in msg.desc.field.iter().enumerate() {
        if f.oneof_index == Some(idx as i32) {
            if f.number() < 16 {
                return Err(err(
                    format!("{el}.{oneof}.{}", f.name()),
                    format!(
                        "field number {} is reserved for the framework (use 16 and up)",
                        f.number()
                    ),
                ));
            }
            cases.push((i, f));
        } else if !framework.contains(&f.name()) {
            return Err(err(
                format!("{el}.{}", f.name()),
                format!(
                    "a hub frame has only the framework fields ({}) and `oneof {oneof}`",
                    framework.join(", ")
                ),
            ));
        }
    }
    Ok(cases)
}
