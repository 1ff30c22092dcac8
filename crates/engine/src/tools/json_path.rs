//! The JSONPath subset `json_edit_tool` understands: `$`, `.key`, `['key']`,
//! `[n]` (negative counts from the end), `[*]` / `.*`, `[start:end]` and
//! `..key` (recursive descent). Expressions resolve to concrete locations so
//! that set/add/remove can edit the document in place.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Key(String),
    Index(i64),
    Wildcard,
    Slice(Option<i64>, Option<i64>),
    /// `..key`: `key` in the current node or any node below it.
    Descend(String),
    /// `..*`: every node below the current one.
    DescendAll,
}

/// One step of a concrete location.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

pub(crate) type Location = Vec<Step>;

pub(crate) fn parse(path: &str) -> Result<Vec<Segment>, String> {
    let path = path.trim();
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    if chars.first() == Some(&'$') {
        i = 1;
    } else if chars
        .first()
        .is_some_and(|c| c.is_alphabetic() || *c == '_')
    {
        // Be lenient with `a.b` (no root): read it as `$.a.b`.
        let (name, next) = read_name(&chars, 0);
        return Ok([vec![Segment::Key(name)], parse_rest(&chars, next)?].concat());
    } else if chars.first() != Some(&'.') && chars.first() != Some(&'[') {
        return Err("a JSONPath starts with `$`".into());
    }
    parse_rest(&chars, i)
}

fn parse_rest(chars: &[char], mut i: usize) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' if chars.get(i + 1) == Some(&'.') => {
                i += 2;
                match chars.get(i) {
                    Some('*') => {
                        segments.push(Segment::DescendAll);
                        i += 1;
                    }
                    Some('[') => {
                        let (seg, next) = parse_bracket(chars, i)?;
                        match seg {
                            Segment::Key(k) => segments.push(Segment::Descend(k)),
                            Segment::Wildcard => segments.push(Segment::DescendAll),
                            _ => return Err("only a key or `*` may follow `..`".into()),
                        }
                        i = next;
                    }
                    _ => {
                        let (name, next) = read_name(chars, i);
                        if name.is_empty() {
                            return Err(format!("expected a key after `..` at position {i}"));
                        }
                        segments.push(Segment::Descend(name));
                        i = next;
                    }
                }
            }
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'*') {
                    segments.push(Segment::Wildcard);
                    i += 1;
                } else {
                    let (name, next) = read_name(chars, i);
                    if name.is_empty() {
                        return Err(format!("expected a key after `.` at position {i}"));
                    }
                    segments.push(Segment::Key(name));
                    i = next;
                }
            }
            '[' => {
                let (seg, next) = parse_bracket(chars, i)?;
                segments.push(seg);
                i = next;
            }
            c => return Err(format!("unexpected `{c}` at position {i}")),
        }
    }
    Ok(segments)
}

fn read_name(chars: &[char], start: usize) -> (String, usize) {
    let mut end = start;
    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
        end += 1;
    }
    (
        chars[start..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_string(),
        end,
    )
}

/// Parses `[...]` starting at the `[`; returns the segment and the index after `]`.
fn parse_bracket(chars: &[char], open: usize) -> Result<(Segment, usize), String> {
    let mut i = open + 1;
    if let Some(&quote) = chars.get(i).filter(|c| **c == '\'' || **c == '"') {
        i += 1;
        let mut key = String::new();
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' && i + 1 < chars.len() {
                i += 1;
            }
            key.push(chars[i]);
            i += 1;
        }
        if chars.get(i) != Some(&quote) || chars.get(i + 1) != Some(&']') {
            return Err(format!(
                "unterminated quoted key starting at position {open}"
            ));
        }
        return Ok((Segment::Key(key), i + 2));
    }
    let close = chars[i..]
        .iter()
        .position(|c| *c == ']')
        .map(|p| p + i)
        .ok_or("missing `]`")?;
    let inner: String = chars[i..close]
        .iter()
        .collect::<String>()
        .trim()
        .to_string();
    let seg = if inner == "*" {
        Segment::Wildcard
    } else if let Some((a, b)) = inner.split_once(':') {
        let bound = |s: &str| -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(Some)
                    .map_err(|_| format!("bad slice bound `{s}`"))
            }
        };
        Segment::Slice(bound(a)?, bound(b)?)
    } else {
        Segment::Index(
            inner
                .parse()
                .map_err(|_| format!("bad index `{inner}` (use ['key'] for keys)"))?,
        )
    };
    Ok((seg, close + 1))
}

pub(crate) fn get<'a>(root: &'a Value, location: &[Step]) -> Option<&'a Value> {
    location.iter().try_fold(root, |node, step| match step {
        Step::Key(k) => node.as_object()?.get(k),
        Step::Index(i) => node.as_array()?.get(*i),
    })
}

pub(crate) fn get_mut<'a>(root: &'a mut Value, location: &[Step]) -> Option<&'a mut Value> {
    location.iter().try_fold(root, |node, step| match step {
        Step::Key(k) => node.as_object_mut()?.get_mut(k),
        Step::Index(i) => node.as_array_mut()?.get_mut(*i),
    })
}

/// Array index with negative values counted from the end; `None` when out of range.
fn normalize(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 { len as i64 + index } else { index };
    (0..len as i64).contains(&i).then_some(i as usize)
}

/// Every location `segments` selects in `root`, in document order.
pub(crate) fn resolve(root: &Value, segments: &[Segment]) -> Vec<Location> {
    let mut current: Vec<Location> = vec![Vec::new()];
    for segment in segments {
        let mut next = Vec::new();
        for location in &current {
            let Some(node) = get(root, location) else {
                continue;
            };
            let mut push = |step: Step| {
                let mut l = location.clone();
                l.push(step);
                next.push(l);
            };
            match segment {
                Segment::Key(k) => {
                    if node.as_object().is_some_and(|o| o.contains_key(k)) {
                        push(Step::Key(k.clone()));
                    }
                }
                Segment::Index(i) => {
                    if let Some(i) = node.as_array().and_then(|a| normalize(*i, a.len())) {
                        push(Step::Index(i));
                    }
                }
                Segment::Wildcard => children(node).into_iter().for_each(push),
                Segment::Slice(start, end) => {
                    if let Some(a) = node.as_array() {
                        let len = a.len() as i64;
                        let clamp = |b: i64| if b < 0 { (len + b).max(0) } else { b.min(len) };
                        let s = start.map_or(0, clamp);
                        let e = end.map_or(len, clamp);
                        (s..e).for_each(|i| push(Step::Index(i as usize)));
                    }
                }
                Segment::Descend(k) => descend(node, location.clone(), &mut |loc, n| {
                    if n.as_object().is_some_and(|o| o.contains_key(k)) {
                        let mut l = loc.clone();
                        l.push(Step::Key(k.clone()));
                        next.push(l);
                    }
                }),
                Segment::DescendAll => descend(node, location.clone(), &mut |loc, n| {
                    for step in children(n) {
                        let mut l = loc.clone();
                        l.push(step);
                        next.push(l);
                    }
                }),
            }
        }
        current = next;
    }
    current
}

fn children(node: &Value) -> Vec<Step> {
    match node {
        Value::Object(o) => o.keys().map(|k| Step::Key(k.clone())).collect(),
        Value::Array(a) => (0..a.len()).map(Step::Index).collect(),
        _ => Vec::new(),
    }
}

/// Visits `node` and every node below it, in pre-order.
fn descend(node: &Value, location: Location, visit: &mut dyn FnMut(&Location, &Value)) {
    visit(&location, node);
    for step in children(node) {
        let Some(child) = get(node, std::slice::from_ref(&step)) else {
            continue;
        };
        let mut l = location.clone();
        l.push(step);
        descend(child, l, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_subset() {
        assert_eq!(
            parse("$.a['b c'][0][*]..d[1:]").unwrap(),
            vec![
                Segment::Key("a".into()),
                Segment::Key("b c".into()),
                Segment::Index(0),
                Segment::Wildcard,
                Segment::Descend("d".into()),
                Segment::Slice(Some(1), None),
            ]
        );
        assert_eq!(
            parse("a.b").unwrap(),
            vec![Segment::Key("a".into()), Segment::Key("b".into())]
        );
        assert_eq!(parse("$").unwrap(), vec![]);
        assert!(parse("$.a[").is_err());
        assert!(parse("$.a[x]").is_err());
        assert!(parse("$.").is_err());
    }

    #[test]
    fn resolves_locations() {
        let doc =
            json!({"users": [{"name": "a", "tags": {"name": "t"}}, {"name": "b"}], "name": "root"});
        let names = |p: &str| -> Vec<Value> {
            resolve(&doc, &parse(p).unwrap())
                .iter()
                .map(|l| get(&doc, l).unwrap().clone())
                .collect()
        };
        assert_eq!(names("$.users[1].name"), vec![json!("b")]);
        assert_eq!(names("$.users[-1].name"), vec![json!("b")]);
        assert_eq!(names("$.users[*].name"), vec![json!("a"), json!("b")]);
        assert_eq!(
            names("$..name"),
            vec![json!("root"), json!("a"), json!("t"), json!("b")]
        );
        assert_eq!(names("$.users[0:1].name"), vec![json!("a")]);
        assert!(names("$.users[5]").is_empty());
        assert!(names("$.nope").is_empty());
    }
}
