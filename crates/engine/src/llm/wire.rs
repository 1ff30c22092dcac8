//! Pieces every provider's request body shares. Bodies are borrowed, typed
//! views of the history that serialize straight to bytes: the history is
//! resent in full on every call, so nothing of it is copied into a
//! `serde_json::Value` first.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::messages::{Message, Stamp, ToolSpec};

/// Encodes a client's request bodies into a buffer sized after the previous
/// one: the history only grows, and growing the buffer from empty would copy
/// it several times per request.
#[derive(Default)]
pub(crate) struct BodyEncoder {
    last_len: AtomicUsize,
}

impl BodyEncoder {
    pub(crate) fn encode(&self, body: &impl Serialize) -> serde_json::Result<Vec<u8>> {
        let mut out = self.buffer();
        serde_json::to_writer(&mut out, body)?;
        self.used(out.len());
        Ok(out)
    }

    /// An empty buffer with room for a body a little larger than the last.
    fn buffer(&self) -> Vec<u8> {
        let last = self.last_len.load(Ordering::Relaxed);
        Vec::with_capacity(last + last / 8 + 1024)
    }

    fn used(&self, len: usize) {
        self.last_len.store(len, Ordering::Relaxed);
    }
}

/// The JSON of the messages of a client's last request, so that the next one
/// (the same history and a few messages more) encodes only the new messages:
/// escaping the whole resent history was a fifth of an engine step's CPU.
/// A message is reused where it is the same as last time at its position,
/// so a history that was cut back or rewritten is encoded again from where
/// it changed. A message taken from the same place of a conversation whose
/// [`Stamp`] is unchanged, a place it already had last time, is known to be
/// the same without being looked at (comparing a long history, out of the
/// CPU's caches, cost more than encoding the new messages); any other is
/// compared exactly, key order included.
#[derive(Default)]
pub(crate) struct EncodedHistory {
    last: Mutex<Encoded>,
}

#[derive(Default)]
struct Encoded {
    messages: Vec<Message>,
    /// Where each message was in the conversation (None: made by pairing).
    taken_from: Vec<Option<usize>>,
    /// The conversation's stamp and length last time.
    conversation: Option<(Stamp, usize)>,
    /// The messages' JSON, comma-separated; message `i` ends at `ends[i]`.
    json: Vec<u8>,
    ends: Vec<usize>,
}

impl EncodedHistory {
    /// Appends the JSON array of `history` (made from the conversation
    /// `all`, stamped `stamp`) to `out`, each message as `encode` writes it.
    pub(crate) fn write_array(
        &self,
        all: &[Message],
        stamp: Option<Stamp>,
        history: &[Cow<'_, Message>],
        out: &mut Vec<u8>,
        mut encode: impl FnMut(&Message, &mut Vec<u8>) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let origin = |m: &Cow<'_, Message>| match m {
            Cow::Borrowed(m) => index_in(all, m),
            Cow::Owned(_) => None,
        };
        // Messages the conversation already had, unchanged under its stamp.
        let known = match (stamp, last.conversation) {
            (Some(now), Some((then, len))) if now == then => len,
            _ => 0,
        };
        let kept = last
            .messages
            .iter()
            .zip(&last.taken_from)
            .zip(history)
            .take_while(|((a, from), b)| match (**from, origin(b)) {
                (Some(i), Some(j)) if i == j && i < known => true,
                _ => same_message(a, b),
            })
            .count();
        let cut = match kept {
            0 => 0,
            n => last.ends[n - 1],
        };
        let last = &mut *last;
        last.messages.truncate(kept);
        last.ends.truncate(kept);
        last.json.truncate(cut);
        last.taken_from.clear();
        last.taken_from.extend(history[..kept].iter().map(origin));
        for m in &history[kept..] {
            if !last.ends.is_empty() {
                last.json.push(b',');
            }
            if let Err(e) = encode(m, &mut last.json) {
                *last = Encoded::default();
                return Err(e);
            }
            last.ends.push(last.json.len());
            last.messages.push(m.clone().into_owned());
            last.taken_from.push(origin(m));
        }
        last.conversation = stamp.map(|s| (s, all.len()));
        out.reserve(last.json.len() + 2);
        out.push(b'[');
        out.extend_from_slice(&last.json);
        out.push(b']');
        Ok(())
    }
}

/// The position of `m` in `all`, when it is one of its elements.
fn index_in(all: &[Message], m: &Message) -> Option<usize> {
    let size = std::mem::size_of::<Message>();
    let offset = (m as *const Message as usize).checked_sub(all.as_ptr() as usize)?;
    let i = offset / size;
    (offset % size == 0 && i < all.len()).then_some(i)
}

/// Equal, and written the same (see [`same_json`]).
fn same_message(a: &Message, b: &Message) -> bool {
    a.role == b.role
        && a.content == b.content
        && a.tool_result == b.tool_result
        && a.tool_calls.len() == b.tool_calls.len()
        && a.tool_calls.iter().zip(&b.tool_calls).all(|(a, b)| {
            a.call_id == b.call_id
                && a.name == b.name
                && a.raw_arguments == b.raw_arguments
                && same_json(&a.arguments, &b.arguments)
        })
}

/// Writes `{"model": …, "messages": […], …}`: the model, the messages from
/// `messages`, then `rest`'s fields (a struct serialized as a JSON object)
/// in their order, into a buffer sized like `encoder`'s last body.
pub(crate) fn write_body(
    encoder: &BodyEncoder,
    model: &str,
    messages: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    rest: &impl Serialize,
) -> serde_json::Result<Vec<u8>> {
    let mut out = encoder.buffer();
    out.extend_from_slice(br#"{"model":"#);
    serde_json::to_writer(&mut out, model)?;
    out.extend_from_slice(br#","messages":"#);
    messages(&mut out)?;
    // `rest` as `{…}`, its opening brace turned into the comma after the
    // messages (or, with no fields, the body closed).
    let at = out.len();
    serde_json::to_writer(&mut out, rest)?;
    if out.len() - at == 2 {
        out.truncate(at);
        out.push(b'}');
    } else {
        out[at] = b',';
    }
    encoder.used(out.len());
    Ok(out)
}

/// One turn of the conversation as Anthropic and Gemini want it: a role and
/// the parts (content blocks) of consecutive messages of that role.
pub(crate) struct Turn<P> {
    pub role: &'static str,
    pub parts: Vec<P>,
}

/// Groups the history into turns. `parts_of` appends a message's parts and
/// returns its role, or `None` for messages that are sent apart (system
/// text). Messages without parts are left out; consecutive messages of one
/// role share a turn (several tool results, and text after them, form one
/// user turn).
pub(crate) fn merged_turns<'a, P>(
    history: &'a [Cow<'a, Message>],
    mut parts_of: impl FnMut(&'a Message, &mut Vec<P>) -> Option<&'static str>,
) -> Vec<Turn<P>> {
    let mut turns: Vec<Turn<P>> = Vec::new();
    let mut parts = Vec::new();
    for m in history {
        let Some(role) = parts_of(m, &mut parts) else {
            continue;
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.parts.append(&mut parts),
            _ => turns.push(Turn {
                role,
                parts: std::mem::take(&mut parts),
            }),
        }
    }
    turns
}

/// A client's tool list as JSON, rendered once per tool set: every step
/// offers the same tools, and their schemas and descriptions are a good part
/// of each request. The same [`Stamp`] and length mean the same tools;
/// without it the tools are compared.
#[derive(Default)]
pub(crate) struct RenderedTools {
    last: Mutex<Option<RenderedSet>>,
}

struct RenderedSet {
    specs: Vec<ToolSpec>,
    stamp: Option<(Stamp, usize)>,
    json: Arc<RawValue>,
}

impl RenderedTools {
    /// The tools a request offers: none when there are none or the model
    /// cannot call tools, else their JSON (see [`RenderedTools::get`]).
    pub(crate) fn offered(
        &self,
        tools: &[ToolSpec],
        stamp: Option<Stamp>,
        tool_calling: bool,
        render: impl FnOnce(&[ToolSpec]) -> serde_json::Result<Box<RawValue>>,
    ) -> serde_json::Result<Option<Arc<RawValue>>> {
        if tools.is_empty() || !tool_calling {
            return Ok(None);
        }
        self.get(tools, stamp, render).map(Some)
    }

    /// The JSON of `tools` (stamped `stamp`), from `render` the first time
    /// (and whenever the tool set changes).
    pub(crate) fn get(
        &self,
        tools: &[ToolSpec],
        stamp: Option<Stamp>,
        render: impl FnOnce(&[ToolSpec]) -> serde_json::Result<Box<RawValue>>,
    ) -> serde_json::Result<Arc<RawValue>> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = stamp.map(|s| (s, tools.len()));
        if let Some(set) = last.as_mut()
            && ((stamp.is_some() && set.stamp == stamp) || same_tools(&set.specs, tools))
        {
            set.stamp = stamp;
            return Ok(set.json.clone());
        }
        let json: Arc<RawValue> = render(tools)?.into();
        *last = Some(RenderedSet {
            specs: tools.to_vec(),
            stamp,
            json: json.clone(),
        });
        Ok(json)
    }
}

/// Equal down to the order of keys in the schemas (which `==` on maps
/// ignores), so a cached rendering is exactly what rendering again would give.
fn same_tools(a: &[ToolSpec], b: &[ToolSpec]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.name == b.name
                && a.description == b.description
                && same_json(&a.parameters, &b.parameters)
        })
}

fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_json(a, b))
        }
        // 0.0 == -0.0, but they are written differently.
        (Value::Number(a), Value::Number(b)) => {
            a == b && a.as_f64().map(f64::to_bits) == b.as_f64().map(f64::to_bits)
        }
        _ => a == b,
    }
}

/// A conversation and configuration for the providers' request tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use serde_json::json;

    use crate::config::{Provider, ResolvedConfig};
    use crate::messages::{Message, Role, ToolCall, ToolResult, ToolSpec};

    pub(crate) fn config(provider: Provider, model: &str) -> ResolvedConfig {
        let mut cfg = ResolvedConfig::defaults(provider);
        cfg.model = model.into();
        cfg.temperature = 0.5;
        cfg.top_p = 1.0;
        cfg.max_tokens = 100;
        cfg
    }

    pub(crate) fn bash_tool() -> ToolSpec {
        ToolSpec {
            name: "bash".into(),
            description: "Run a command".into(),
            parameters: json!({"type": "object", "properties": {"command": {"type": "string"}}}),
        }
    }

    /// System text, a task, a turn calling two tools (one with malformed
    /// arguments) and their results (one failed), a follow-up, and a last
    /// call (`call_id`) without a result.
    pub(crate) fn conversation(last_call_id: &str) -> Vec<Message> {
        let call = |id: &str, arguments, raw_arguments| ToolCall {
            call_id: id.into(),
            name: "bash".into(),
            arguments,
            raw_arguments,
        };
        let result = |id: &str, result: &str, error: Option<&str>| {
            Message::tool(ToolResult {
                call_id: id.into(),
                name: "bash".into(),
                success: error.is_none(),
                result: result.into(),
                error: error.map(str::to_string),
            })
        };
        let assistant = |content: &str, tool_calls| Message {
            role: Role::Assistant,
            content: content.into(),
            tool_calls,
            tool_result: None,
        };
        vec![
            Message::system("You are a coder."),
            Message::user("List files"),
            assistant(
                "Looking.",
                vec![
                    call("call_1", json!({"command": "ls"}), None),
                    call("call_2", serde_json::Value::Null, Some("{bad".into())),
                ],
            ),
            result("call_1", "a.txt", None),
            result("call_2", "", Some("exit 1")),
            Message::user("Go on"),
            assistant(
                "",
                vec![call(last_call_id, json!({"command": "pwd"}), None)],
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Conversation, Role};
    use serde_json::json;

    fn spec(parameters: Value) -> ToolSpec {
        ToolSpec {
            name: "bash".into(),
            description: "d".into(),
            parameters,
        }
    }

    /// Encodes `all` through `cache` (with its stamp when `stamped`),
    /// counting the messages encoded.
    fn array(
        cache: &EncodedHistory,
        all: &Conversation,
        stamped: bool,
        encoded: &mut usize,
    ) -> String {
        let history: Vec<_> = all.iter().map(Cow::Borrowed).collect();
        let mut out = b"x".to_vec();
        let stamp = stamped.then(|| all.stamp());
        cache
            .write_array(all, stamp, &history, &mut out, |m, buf| {
                *encoded += 1;
                serde_json::to_writer(buf, m)
            })
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn only_new_or_changed_messages_are_encoded_again() {
        for stamped in [true, false] {
            let fresh = |h: &[Message]| format!("x{}", serde_json::to_string(h).unwrap());
            let cache = EncodedHistory::default();
            let mut n = 0;
            let mut history = Conversation::new(fixtures::conversation("call_3"));
            assert_eq!(array(&cache, &history, stamped, &mut n), fresh(&history));
            assert_eq!(n, history.len());

            // A grown history: only the new messages.
            history.push(Message::user("more"));
            history.push(Message::user("and more"));
            n = 0;
            assert_eq!(array(&cache, &history, stamped, &mut n), fresh(&history));
            assert_eq!(n, 2);

            // A message changed in the middle (here only the key order of
            // its arguments) of another conversation: encoded again from there on.
            let mut messages = history.to_vec();
            messages[2].tool_calls[0].arguments = json!({"b": 1, "a": 2});
            let changed = Conversation::new(messages);
            n = 0;
            assert_eq!(array(&cache, &changed, stamped, &mut n), fresh(&changed));
            assert_eq!(n, history.len() - 2);
            n = 0;
            assert_eq!(array(&cache, &history, stamped, &mut n), fresh(&history));
            assert_eq!(n, history.len() - 2);

            // Cut back (a step undone), then grown differently.
            history.truncate(4);
            n = 0;
            assert_eq!(array(&cache, &history, stamped, &mut n), fresh(&history));
            assert_eq!(n, 0);
            history.push(Message::user("instead"));
            assert_eq!(array(&cache, &history, stamped, &mut n), fresh(&history));
            assert_eq!(n, 1);

            // Empty.
            let empty = Conversation::default();
            assert_eq!(array(&cache, &empty, stamped, &mut n), "x[]");
        }
    }

    /// Under an unchanged stamp the messages seen before are not compared:
    /// what is reused is what they were encoded as.
    #[test]
    fn a_stamped_conversation_reuses_its_messages_without_comparing() {
        let cache = EncodedHistory::default();
        let mut history = Conversation::new(fixtures::conversation("call_3"));
        let mut n = 0;
        array(&cache, &history, true, &mut n);
        history.push(Message::user("more"));
        // The cached copy of a message made different from the conversation's:
        // only a comparison could notice, so under the stamp it is reused.
        cache.last.lock().unwrap().messages[0].content = "stale".into();
        n = 0;
        let stamped = array(&cache, &history, true, &mut n);
        assert_eq!(n, 1);
        assert_eq!(
            stamped,
            format!("x{}", serde_json::to_string(&*history).unwrap())
        );
        // Without the stamp it is compared, found different, and encoded again.
        cache.last.lock().unwrap().messages[0].content = "stale".into();
        n = 0;
        array(&cache, &history, false, &mut n);
        assert_eq!(n, history.len());
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_behind() {
        let cache = EncodedHistory::default();
        let history = Conversation::new(fixtures::conversation("call_3"));
        let borrowed: Vec<_> = history.iter().map(Cow::Borrowed).collect();
        let fail_at_third = |m: &Message, buf: &mut Vec<u8>| {
            if m.role == Role::Assistant {
                return Err(serde::ser::Error::custom("no"));
            }
            serde_json::to_writer(buf, m)
        };
        assert!(
            cache
                .write_array(
                    &history,
                    Some(history.stamp()),
                    &borrowed,
                    &mut Vec::new(),
                    fail_at_third
                )
                .is_err()
        );
        let mut n = 0;
        assert_eq!(
            array(&cache, &history, true, &mut n),
            format!("x{}", serde_json::to_string(&*history).unwrap())
        );
        assert_eq!(n, history.len());
    }

    #[test]
    fn bodies_put_the_options_after_the_messages() {
        #[derive(Serialize)]
        struct Rest {
            #[serde(skip_serializing_if = "Option::is_none")]
            stream: Option<bool>,
        }
        let encoder = BodyEncoder::default();
        let messages = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"[]");
            Ok(())
        };
        let body = |stream| {
            let b = write_body(&encoder, "m\"", messages, &Rest { stream }).unwrap();
            String::from_utf8(b).unwrap()
        };
        assert_eq!(body(None), r#"{"model":"m\"","messages":[]}"#);
        assert_eq!(
            body(Some(true)),
            r#"{"model":"m\"","messages":[],"stream":true}"#
        );
    }

    #[test]
    fn tools_are_rendered_once_per_tool_set() {
        let cache = RenderedTools::default();
        let render = |t: &[ToolSpec]| serde_json::value::to_raw_value(t);
        let a = vec![spec(json!({"type": "object", "required": []}))];
        let first = cache.get(&a, None, render).unwrap();
        let again = cache
            .get(&a, None, |_| {
                panic!("the same tools are not rendered again")
            })
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Equal as maps, but not in key order: rendered anew.
        let b = vec![spec(json!({"required": [], "type": "object"}))];
        let other = cache.get(&b, None, render).unwrap();
        assert_eq!(
            other.get(),
            r#"[{"name":"bash","description":"d","parameters":{"required":[],"type":"object"}}]"#
        );
    }

    #[test]
    fn stamped_tools_are_compared_only_when_the_stamp_or_length_changes() {
        let cache = RenderedTools::default();
        let render = |t: &[ToolSpec]| serde_json::value::to_raw_value(t);
        let mut tools = crate::messages::ToolSpecs::new(vec![spec(json!({"type": "object"}))]);
        let first = cache.get(&tools, Some(tools.stamp()), render).unwrap();
        // The cached copy made different: under the stamp it is not looked at.
        cache.last.lock().unwrap().as_mut().unwrap().specs[0].description = "stale".into();
        let again = cache
            .get(&tools, Some(tools.stamp()), |_| {
                panic!("not rendered again")
            })
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Grown (an MCP server's tools added): rendered anew.
        tools.push(ToolSpec {
            name: "mcp_x".into(),
            ..spec(json!({}))
        });
        let grown = cache.get(&tools, Some(tools.stamp()), render).unwrap();
        assert_eq!(grown.get(), serde_json::to_string(&*tools).unwrap());
        // Without a stamp the cached copy is compared.
        cache.last.lock().unwrap().as_mut().unwrap().specs[0].description = "stale".into();
        let compared = cache.get(&tools, None, render).unwrap();
        assert!(!Arc::ptr_eq(&grown, &compared));
        assert_eq!(compared.get(), grown.get());
    }
}
