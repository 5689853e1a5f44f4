//! A minimal element tree over quick-xml events, bounded in depth.
//!
//! XML-RPC documents are small and nested; reading them into a tree first keeps the
//! XML-RPC grammar in `xmlrpc.rs` simple. Building the tree is iterative, so hostile input
//! cannot exhaust the stack, and the depth limit bounds the recursion of the code that
//! walks the tree afterwards.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::WireError;

/// An element with its child nodes; attributes are irrelevant to XML-RPC and dropped.
#[derive(Debug)]
pub(crate) struct Element {
    pub name: String,
    pub children: Vec<Node>,
}

/// A child of an element. Adjacent text, CDATA and entity references are merged into
/// one `Text` node.
#[derive(Debug)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    fn new(name: &str) -> Self {
        Element {
            name: name.to_owned(),
            children: Vec::new(),
        }
    }

    /// Child elements in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// All text directly inside this element, concatenated.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// True when the element holds text other than whitespace (used to reject text mixed
    /// with structure).
    pub fn has_text(&self) -> bool {
        self.children
            .iter()
            .any(|n| matches!(n, Node::Text(t) if !t.trim().is_empty()))
    }

    /// The only child element, which must be named `name`; whitespace may surround it.
    pub fn only_child(&self, name: &'static str) -> Result<&Element, WireError> {
        if self.has_text() {
            return Err(WireError::UnexpectedText {
                inside: self.name.clone(),
            });
        }
        let mut it = self.elements();
        match (it.next(), it.next()) {
            (Some(e), None) if e.name == name => Ok(e),
            (Some(e), None) => Err(WireError::UnexpectedElement {
                expected: name,
                found: e.name.clone(),
            }),
            (None, _) => Err(WireError::MissingElement {
                name,
                inside: self.name.clone(),
            }),
            (Some(_), Some(e)) => Err(WireError::UnexpectedElement {
                expected: name,
                found: e.name.clone(),
            }),
        }
    }

    fn push_text(&mut self, s: &str) {
        if let Some(Node::Text(t)) = self.children.last_mut() {
            t.push_str(s);
        } else {
            self.children.push(Node::Text(s.to_owned()));
        }
    }
}

/// Parses a whole document into its root element.
pub(crate) fn parse(input: &[u8], max_depth: usize) -> Result<Element, WireError> {
    let text = std::str::from_utf8(input).map_err(|e| WireError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader.read_event().map_err(|e| WireError::Xml {
            offset: pos,
            message: e.to_string(),
        })?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(WireError::TrailingContent);
                }
                if stack.len() >= max_depth {
                    return Err(WireError::TooDeep { limit: max_depth });
                }
                stack.push(Element::new(start.name().as_ref()));
            }
            Event::Empty(start) => {
                let el = Element::new(start.name().as_ref());
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None if root.is_none() => root = Some(el),
                    None => return Err(WireError::TrailingContent),
                }
            }
            Event::End(_) => {
                // quick-xml has already checked that the end tag matches the open one.
                let Some(el) = stack.pop() else {
                    return Err(WireError::Xml {
                        offset: pos,
                        message: "end tag without a start tag".into(),
                    });
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => push_text(&mut stack, &t.xml10_content())?,
            Event::CData(c) => push_text(&mut stack, &c.xml10_content())?,
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    Ok(None) => match &*r {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(WireError::UnknownEntity(other.to_owned())),
                    },
                    Err(_) => return Err(WireError::UnknownEntity(r.to_string())),
                };
                push_text(&mut stack, ch.encode_utf8(&mut [0; 4]))?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => {
                return match (stack.is_empty(), root) {
                    (true, Some(root)) => Ok(root),
                    _ => Err(WireError::Truncated),
                };
            }
        }
    }
}

fn push_text(stack: &mut [Element], s: &str) -> Result<(), WireError> {
    match stack.last_mut() {
        Some(el) => {
            el.push_text(s);
            Ok(())
        }
        // Whitespace around the root element is allowed; anything else is not XML-RPC.
        None if s.trim().is_empty() => Ok(()),
        None => Err(WireError::TrailingContent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_entities_is_merged_and_kept_verbatim() {
        let root = parse(b"<a> x &amp; &#65;&lt;<![CDATA[<y>]]> </a>", 8).unwrap();
        assert_eq!(root.text(), " x & A<<y> ");
    }

    #[test]
    fn depth_is_bounded() {
        let doc = "<a>".repeat(10) + &"</a>".repeat(10);
        assert!(matches!(
            parse(doc.as_bytes(), 5),
            Err(WireError::TooDeep { limit: 5 })
        ));
        assert!(parse(doc.as_bytes(), 10).is_ok());
    }

    #[test]
    fn malformed_documents_are_errors() {
        for doc in [
            &b""[..],
            b"<a>",
            b"<a></b>",
            b"<a/><b/>",
            b"<a/>junk",
            b"<a>&bogus;</a>",
            b"\xff<a/>",
        ] {
            assert!(parse(doc, 8).is_err(), "{:?}", String::from_utf8_lossy(doc));
        }
    }
}
