//! Cuts a JSON array that arrives in chunks into its elements, so that a container listing is
//! parsed one container at a time as it arrives. A thousand containers of Docker 29 make a body
//! of megabytes; held whole (and grown by doubling) it was the largest transient allocation of a
//! full resync, and what it left in the heap stayed in the sidecar's RSS.

/// Why the body is not an array of objects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ArrayError {
    #[error("the answer is not a JSON array")]
    NotAnArray,
    #[error("an element of the array is not a JSON object or array")]
    NotAnObject,
    #[error("the answer ends before its JSON array does")]
    Truncated,
    #[error("text after the end of the JSON array")]
    TrailingText,
}

/// The splitter's state between chunks. Structural characters are ASCII, so walking the bytes
/// of UTF-8 text is exact (bytes of multi-byte characters are all >= 0x80).
#[derive(Debug, Default)]
pub(crate) struct ArrayElements {
    /// The current element so far.
    element: Vec<u8>,
    /// Nesting inside the current element (0: between elements).
    depth: usize,
    in_string: bool,
    escaped: bool,
    opened: bool,
    closed: bool,
}

impl ArrayElements {
    /// Feeds the next chunk; `each` gets every element completed in it, as JSON text.
    pub(crate) fn feed<E>(
        &mut self,
        chunk: &[u8],
        each: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), Result<ArrayError, E>> {
        for &b in chunk {
            if self.depth > 0 {
                self.element.push(b);
                if self.in_string {
                    if self.escaped {
                        self.escaped = false;
                    } else if b == b'\\' {
                        self.escaped = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            each(&self.element).map_err(Err)?;
                            self.element.clear();
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if b.is_ascii_whitespace() {
                continue;
            }
            if self.closed {
                return Err(Ok(ArrayError::TrailingText));
            }
            if !self.opened {
                if b != b'[' {
                    return Err(Ok(ArrayError::NotAnArray));
                }
                self.opened = true;
                continue;
            }
            match b {
                b',' => {}
                b']' => self.closed = true,
                b'{' | b'[' => {
                    self.depth = 1;
                    self.element.push(b);
                }
                _ => return Err(Ok(ArrayError::NotAnObject)),
            }
        }
        Ok(())
    }

    /// The body is over: the array must be complete.
    pub(crate) fn finish(&self) -> Result<(), ArrayError> {
        if self.closed {
            Ok(())
        } else {
            Err(ArrayError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The elements of `text` fed in chunks of `size` bytes.
    fn split(text: &str, size: usize) -> Result<Vec<String>, ArrayError> {
        let mut out = Vec::new();
        let mut splitter = ArrayElements::default();
        for chunk in text.as_bytes().chunks(size) {
            splitter
                .feed(chunk, &mut |e: &[u8]| {
                    out.push(String::from_utf8(e.to_vec()).expect("utf-8"));
                    Ok::<(), ()>(())
                })
                .map_err(|e| e.expect("no element error"))?;
        }
        splitter.finish()?;
        Ok(out)
    }

    #[test]
    fn elements_come_whole_whatever_the_chunks() {
        let text = r#" [ {"a": "x}\"]{", "b": [1, {"c": "é"}]}, {"d": {}} ,[2]] "#;
        for size in [1, 2, 3, 7, 1000] {
            assert_eq!(
                split(text, size).expect("an array"),
                [
                    r#"{"a": "x}\"]{", "b": [1, {"c": "é"}]}"#,
                    r#"{"d": {}}"#,
                    "[2]"
                ],
                "chunks of {size}"
            );
        }
        assert_eq!(split("[]", 1).expect("empty"), Vec::<String>::new());
    }

    #[test]
    fn what_is_not_a_whole_array_is_an_error() {
        assert_eq!(
            split(r#"{"message": "no"}"#, 4),
            Err(ArrayError::NotAnArray)
        );
        assert_eq!(split(r#"[{"a": 1}, {"b": "#, 4), Err(ArrayError::Truncated));
        assert_eq!(split(r#"[{"a": 1}] x"#, 4), Err(ArrayError::TrailingText));
        assert_eq!(split(r#"[1, 2]"#, 4), Err(ArrayError::NotAnObject));
        assert_eq!(split("", 4), Err(ArrayError::Truncated));
    }
}
