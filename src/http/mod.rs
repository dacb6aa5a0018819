//! HTTP/1.1 framing: pure parsing of heads and chunked bodies, and response writing.
pub mod chunked;
pub mod cors;
pub mod encoding;
pub mod parse;
pub mod proxy;
pub mod response;
#[cfg(test)]
mod tests;
