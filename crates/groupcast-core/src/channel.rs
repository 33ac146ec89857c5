//! Channel names: validation, namespace and user-limited parts.
//!
//! `chat:lobby` is channel `lobby` in namespace `chat`; `lobby` is in the
//! default namespace. `dialog#42,43` is user-limited: only users 42 and 43
//! may subscribe. A name must be non-empty, at most the configured length,
//! and free of control characters (they break logs and NATS subjects).

use thiserror::Error;

/// Separates namespace and rest: `ns:rest`.
pub const NAMESPACE_SEPARATOR: char = ':';
/// Starts the user list of a user-limited channel: `dialog#1,2`.
pub const USER_BOUNDARY: char = '#';
/// Separates users in a user-limited channel.
pub const USER_SEPARATOR: char = ',';
/// Default maximum channel name length in bytes (`channel_max_length`).
pub const DEFAULT_MAX_LENGTH: usize = 255;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {0} bytes")]
    TooLong(usize),
    #[error("channel name contains a control character")]
    ControlCharacter,
}

/// A validated channel name (borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a>(&'a str);

impl<'a> ChannelName<'a> {
    pub fn parse(name: &'a str, max_len: usize) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > max_len {
            return Err(ChannelError::TooLong(max_len));
        }
        if name.chars().any(char::is_control) {
            return Err(ChannelError::ControlCharacter);
        }
        Ok(ChannelName(name))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Namespace name; `""` for the default namespace.
    pub fn namespace(&self) -> &'a str {
        match self.0.split_once(NAMESPACE_SEPARATOR) {
            Some((ns, _)) => ns,
            None => "",
        }
    }

    /// Part after the namespace.
    pub fn rest(&self) -> &'a str {
        match self.0.split_once(NAMESPACE_SEPARATOR) {
            Some((_, rest)) => rest,
            None => self.0,
        }
    }

    /// Users allowed in a user-limited channel, or `None` if not user-limited.
    pub fn allowed_users(&self) -> Option<impl Iterator<Item = &'a str>> {
        let (_, users) = self.rest().rsplit_once(USER_BOUNDARY)?;
        Some(users.split(USER_SEPARATOR).filter(|u| !u.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_namespace_and_users() {
        let c = ChannelName::parse("chat:lobby", 255).unwrap();
        assert_eq!((c.namespace(), c.rest()), ("chat", "lobby"));
        let c = ChannelName::parse("lobby", 255).unwrap();
        assert_eq!((c.namespace(), c.rest()), ("", "lobby"));
        assert!(c.allowed_users().is_none());
        let c = ChannelName::parse("dm:dialog#42,43", 255).unwrap();
        assert_eq!(c.allowed_users().unwrap().collect::<Vec<_>>(), ["42", "43"]);
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::parse("", 255), Err(ChannelError::Empty));
        assert_eq!(ChannelName::parse("abcd", 3), Err(ChannelError::TooLong(3)));
        assert_eq!(
            ChannelName::parse("a\nb", 255),
            Err(ChannelError::ControlCharacter)
        );
        assert!(ChannelName::parse("ünï.cøde >*", 255).is_ok());
    }
}
