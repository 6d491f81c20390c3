//! Connection strings (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`), as IoT hubs and
//! DPS instances hand them out: one type for parsing, printing and masking them.

use std::fmt;

/// A service connection string. `Debug` never shows the key; `Display` is the full string (it
/// is what an operator copies), so it must not be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub key_name: String,
    /// Base64 key.
    pub key: String,
}

/// Why a connection string was refused (the message never contains the key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionStringError {
    #[error("connection string part {0:?} is not Name=Value")]
    NotNameValue(String),
    #[error("connection string has no {0}")]
    Missing(&'static str),
    #[error("SharedAccessKey in the connection string is not base64")]
    KeyNotBase64,
    #[error("HostName {0:?} is not a host name")]
    BadHostName(String),
}

impl ConnectionString {
    /// Parses and validates a connection string (names case-insensitive, any order, other
    /// parts ignored).
    pub fn parse(cs: &str) -> Result<ConnectionString, ConnectionStringError> {
        let (mut host, mut key_name, mut key) = (None, None, None);
        for part in cs.trim().split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                let shown: String = part.chars().take(40).collect();
                return Err(ConnectionStringError::NotNameValue(shown));
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "hostname" => host = Some(v.trim().to_owned()),
                "sharedaccesskeyname" => key_name = Some(v.trim().to_owned()),
                "sharedaccesskey" => key = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        let host_name = host.filter(|h| !h.is_empty()).ok_or(ConnectionStringError::Missing("HostName"))?;
        let key_name =
            key_name.filter(|n| !n.is_empty()).ok_or(ConnectionStringError::Missing("SharedAccessKeyName"))?;
        let key = key.ok_or(ConnectionStringError::Missing("SharedAccessKey"))?;
        if crate::base64::decode(&key).is_none() {
            return Err(ConnectionStringError::KeyNotBase64);
        }
        if !host_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']')) {
            let shown: String = host_name.chars().take(100).collect();
            return Err(ConnectionStringError::BadHostName(shown));
        }
        Ok(ConnectionString { host_name, key_name, key })
    }

    /// The string with the key replaced by `****`, as ARM shows linked hubs.
    pub fn masked(&self) -> String {
        format!("HostName={};SharedAccessKeyName={};SharedAccessKey=****", self.host_name, self.key_name)
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={};SharedAccessKeyName={};SharedAccessKey={}", self.host_name, self.key_name, self.key)
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_masks() {
        let cs = ConnectionString::parse(
            "sharedaccesskey=aGVsbG8=;HostName=Hub.example.net;SharedAccessKeyName=iothubowner;DeviceId=x",
        )
        .expect("parses");
        assert_eq!(cs.host_name, "Hub.example.net");
        assert_eq!(cs.to_string(), "HostName=Hub.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=aGVsbG8=");
        assert_eq!(cs.masked(), "HostName=Hub.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=****");
        assert!(!format!("{cs:?}").contains("aGVsbG8"));
        assert_eq!(
            ConnectionString::parse("HostName=h;SharedAccessKey=aGVsbG8="),
            Err(ConnectionStringError::Missing("SharedAccessKeyName"))
        );
        assert_eq!(
            ConnectionString::parse("HostName=h;SharedAccessKeyName=n;SharedAccessKey=!!"),
            Err(ConnectionStringError::KeyNotBase64)
        );
        assert!(matches!(ConnectionString::parse("garbage"), Err(ConnectionStringError::NotNameValue(_))));
        assert!(matches!(
            ConnectionString::parse("HostName=a b;SharedAccessKeyName=n;SharedAccessKey=aGVsbG8="),
            Err(ConnectionStringError::BadHostName(_))
        ));
    }
}
