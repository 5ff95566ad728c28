//! Tokens at rest: the OS keychain, one namespace per environment.
//!
//! Entries live under the service `gangway`, with the user field naming the
//! relay and the item: `https://gangway.example.com#refresh`,
//! `…#access`, `…#status`, `…#dpop-key`. Two environments therefore never overwrite each
//! other. There is no fallback to a file: without a reachable keychain the
//! caller gets [`KeychainError::Unavailable`], saying what is missing.
//!
//! Values longer than [`CHUNK_CHARS`] are split into numbered chunks (the
//! Windows Credential Manager holds about 2.5 KB per entry). A chunked value
//! is written as a new *generation* of chunks first and the head entry is
//! switched to it last, so a rotated refresh token is stored before the old
//! one is dropped and a crash in between leaves the old value readable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use url::Url;

/// Service name of every Gangway keychain entry.
pub const SERVICE: &str = "gangway";

/// Longest value stored in one entry; longer ones are chunked. Below the
/// Windows Credential Manager's 2560-byte blob (UTF-16: 1280 characters).
pub const CHUNK_CHARS: usize = 1000;

/// Marks a head entry that points at chunks: `gangway-chunks:<generation>:<count>`.
const CHUNK_MARK: &str = "gangway-chunks:";

/// Why the keychain could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeychainError {
    /// No keychain service can be reached on this system (e.g. no D-Bus
    /// session bus, or no Secret Service provider on it).
    #[error("{0}")]
    Unavailable(String),
    /// The keychain is there but refused access (locked, no default
    /// keyring, or access denied).
    #[error(
        "the OS keychain is locked, has no default keyring, or refused access ({0}); \
         unlock it (log in to the desktop session) or use GANGWAY_TOKEN / --token-file instead"
    )]
    Locked(String),
    /// An entry holds something Gangway did not write.
    #[error("keychain entry {entry}: {reason}")]
    Corrupt { entry: String, reason: String },
    /// Any other failure of the platform's keychain.
    #[error("the OS keychain failed: {0}")]
    Failed(String),
}

/// A place to keep secrets by name. The OS keychain in the product; a map
/// in tests.
pub trait SecretStore: Send + Sync {
    /// The value stored under `user`, if any.
    fn get(&self, user: &str) -> Result<Option<String>, KeychainError>;
    /// Stores `value` under `user`, replacing any previous value.
    fn set(&self, user: &str, value: &str) -> Result<(), KeychainError>;
    /// Removes `user`; `Ok(false)` if there was nothing to remove.
    fn delete(&self, user: &str) -> Result<bool, KeychainError>;
}

/// The platform keychain through the `keyring` crate: Secret Service on
/// Linux, Keychain on macOS, Credential Manager on Windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsKeychain;

#[cfg(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "macos",
    target_os = "windows"
))]
impl OsKeychain {
    fn entry(user: &str) -> Result<keyring::Entry, KeychainError> {
        keyring::Entry::new(SERVICE, user).map_err(map_keyring_error)
    }
}

#[cfg(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "macos",
    target_os = "windows"
))]
impl SecretStore for OsKeychain {
    fn get(&self, user: &str) -> Result<Option<String>, KeychainError> {
        match Self::entry(user)?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(map_keyring_error(e)),
        }
    }

    fn set(&self, user: &str, value: &str) -> Result<(), KeychainError> {
        Self::entry(user)?
            .set_password(value)
            .map_err(map_keyring_error)
    }

    fn delete(&self, user: &str) -> Result<bool, KeychainError> {
        match Self::entry(user)?.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(map_keyring_error(e)),
        }
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "macos",
    target_os = "windows"
)))]
impl SecretStore for OsKeychain {
    fn get(&self, _: &str) -> Result<Option<String>, KeychainError> {
        Err(unsupported())
    }
    fn set(&self, _: &str, _: &str) -> Result<(), KeychainError> {
        Err(unsupported())
    }
    fn delete(&self, _: &str) -> Result<bool, KeychainError> {
        Err(unsupported())
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "macos",
    target_os = "windows"
)))]
fn unsupported() -> KeychainError {
    KeychainError::Unavailable(
        "this system has no supported OS keychain; use GANGWAY_TOKEN or --token-file".into(),
    )
}

/// Turns the platform's error into one that says what is missing.
#[cfg(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "macos",
    target_os = "windows"
))]
fn map_keyring_error(e: keyring::Error) -> KeychainError {
    let detail = crate::error::error_chain(&e);
    match e {
        keyring::Error::NoStorageAccess(_) => KeychainError::Locked(detail),
        keyring::Error::PlatformFailure(_) => {
            classify_platform_failure(&detail).unwrap_or(KeychainError::Failed(detail))
        }
        keyring::Error::BadEncoding(_) => KeychainError::Corrupt {
            entry: SERVICE.into(),
            reason: "not UTF-8".into(),
        },
        _ => KeychainError::Failed(detail),
    }
}

/// Recognises "there is no keychain service at all" among platform
/// failures, which on Linux come from D-Bus with messages like
/// "Unable to autolaunch a dbus-daemon without a $DISPLAY for X11" or
/// "The name org.freedesktop.secrets was not provided by any .service files".
pub fn classify_platform_failure(detail: &str) -> Option<KeychainError> {
    let d = detail.to_ascii_lowercase();
    let no_bus = [
        "autolaunch",
        "dbus_session_bus_address",
        "failed to connect to socket",
        "no such file or directory",
        "connection refused",
        "could not connect",
        "session bus",
    ];
    let no_provider = [
        "org.freedesktop.secrets",
        "serviceunknown",
        "not provided by any .service files",
    ];
    if no_provider.iter().any(|p| d.contains(p)) {
        return Some(KeychainError::Unavailable(format!(
            "nothing provides the Secret Service (org.freedesktop.secrets) on the D-Bus session \
             bus; start gnome-keyring-daemon, or KeePassXC with Secret Service enabled, or use \
             GANGWAY_TOKEN / --token-file instead (detail: {detail})"
        )));
    }
    if no_bus.iter().any(|p| d.contains(p)) {
        return Some(KeychainError::Unavailable(format!(
            "the D-Bus session bus is not reachable, so the Secret Service (GNOME Keyring, \
             KWallet, KeePassXC) cannot be used; run from a desktop session (or under \
             `dbus-run-session` with a keyring daemon), or use GANGWAY_TOKEN / --token-file \
             instead (detail: {detail})"
        )));
    }
    None
}

/// An in-memory [`SecretStore`], for tests of code that uses the keychain.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    map: Arc<Mutex<HashMap<String, String>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Names of the entries held (never the values).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.map.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }
}

impl SecretStore for MemoryStore {
    fn get(&self, user: &str) -> Result<Option<String>, KeychainError> {
        Ok(self.map.lock().unwrap().get(user).cloned())
    }
    fn set(&self, user: &str, value: &str) -> Result<(), KeychainError> {
        self.map
            .lock()
            .unwrap()
            .insert(user.to_string(), value.to_string());
        Ok(())
    }
    fn delete(&self, user: &str) -> Result<bool, KeychainError> {
        Ok(self.map.lock().unwrap().remove(user).is_some())
    }
}

/// The items Gangway keeps per environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The refresh token.
    Refresh,
    /// The current access token and when it expires (JSON).
    Access,
    /// Why a new sign-in is needed (not secret; set when refresh failed for good).
    Status,
    /// This device's DPoP proof key (PKCS#8, base64url): the private key
    /// the tokens are bound to (`crate::dpop`).
    DpopKey,
}

impl Item {
    fn suffix(self) -> &'static str {
        match self {
            Item::Refresh => "refresh",
            Item::Access => "access",
            Item::Status => "status",
            Item::DpopKey => "dpop-key",
        }
    }

    pub const ALL: [Item; 4] = [Item::Refresh, Item::Access, Item::Status, Item::DpopKey];
}

/// One environment's slice of the keychain. Blocking: call from
/// `spawn_blocking` (D-Bus calls on Linux block).
#[derive(Clone)]
pub struct Keychain {
    store: Arc<dyn SecretStore>,
    namespace: String,
    chunk_chars: usize,
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keychain")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// The namespace of an environment: its relay URL without a trailing slash.
pub fn namespace_for(relay: &Url) -> String {
    relay.as_str().trim_end_matches('/').to_string()
}

impl Keychain {
    /// The OS keychain, namespaced by `relay`.
    pub fn os(relay: &Url) -> Self {
        Self::new(Arc::new(OsKeychain), relay)
    }

    pub fn new(store: Arc<dyn SecretStore>, relay: &Url) -> Self {
        Self {
            store,
            namespace: namespace_for(relay),
            chunk_chars: CHUNK_CHARS,
        }
    }

    /// Uses a smaller chunk size (tests).
    pub fn with_chunk_chars(mut self, n: usize) -> Self {
        self.chunk_chars = n.max(1);
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn head(&self, item: Item) -> String {
        format!("{}#{}", self.namespace, item.suffix())
    }

    fn chunk_name(&self, item: Item, generation: u64, index: usize) -> String {
        format!("{}#{}.g{generation}.{index}", self.namespace, item.suffix())
    }

    /// Runs `f` on a blocking thread (keychain calls block on D-Bus or the
    /// platform API) and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keychain) -> Result<T, KeychainError> + Send + 'static,
    ) -> Result<T, KeychainError> {
        let k = self.clone();
        tokio::task::spawn_blocking(move || f(&k))
            .await
            .map_err(|e| KeychainError::Failed(format!("keychain task: {e}")))?
    }

    /// Checks that the keychain can be reached at all (reads one entry).
    pub fn probe(&self) -> Result<(), KeychainError> {
        self.store.get(&self.head(Item::Status)).map(|_| ())
    }

    /// Reads `item`, reassembling chunks.
    pub fn get(&self, item: Item) -> Result<Option<String>, KeychainError> {
        let head_name = self.head(item);
        let Some(head) = self.store.get(&head_name)? else {
            return Ok(None);
        };
        let Some((generation, count)) = parse_chunk_mark(&head) else {
            return Ok(Some(head));
        };
        let mut out = String::new();
        for i in 0..count {
            let name = self.chunk_name(item, generation, i);
            match self.store.get(&name)? {
                Some(part) => out.push_str(&part),
                None => {
                    return Err(KeychainError::Corrupt {
                        entry: head_name,
                        reason: format!("chunk {i} of {count} is missing"),
                    })
                }
            }
        }
        Ok(Some(out))
    }

    /// Stores `item`. Long values are chunked; the new chunks are written
    /// before the head entry points at them, and the old ones removed after.
    pub fn set(&self, item: Item, value: &str) -> Result<(), KeychainError> {
        let head_name = self.head(item);
        let old = self
            .store
            .get(&head_name)?
            .and_then(|h| parse_chunk_mark(&h));
        let chars: Vec<char> = value.chars().collect();
        if chars.len() <= self.chunk_chars && !value.starts_with(CHUNK_MARK) {
            self.store.set(&head_name, value)?;
        } else {
            let generation = old.map(|(g, _)| g + 1).unwrap_or(1);
            let parts: Vec<String> = chars
                .chunks(self.chunk_chars)
                .map(|c| c.iter().collect())
                .collect();
            for (i, part) in parts.iter().enumerate() {
                self.store
                    .set(&self.chunk_name(item, generation, i), part)?;
            }
            self.store.set(
                &head_name,
                &format!("{CHUNK_MARK}{generation}:{}", parts.len()),
            )?;
        }
        if let Some((generation, count)) = old {
            for i in 0..count {
                let _ = self.store.delete(&self.chunk_name(item, generation, i));
            }
        }
        Ok(())
    }

    /// Removes `item` and its chunks; `Ok(false)` if nothing was stored.
    pub fn delete(&self, item: Item) -> Result<bool, KeychainError> {
        let head_name = self.head(item);
        let old = self.store.get(&head_name)?;
        let Some(old) = old else { return Ok(false) };
        self.store.delete(&head_name)?;
        if let Some((generation, count)) = parse_chunk_mark(&old) {
            for i in 0..count {
                let _ = self.store.delete(&self.chunk_name(item, generation, i));
            }
        }
        Ok(true)
    }

    /// Removes everything stored for this environment.
    pub fn delete_all(&self) -> Result<bool, KeychainError> {
        let mut any = false;
        for item in Item::ALL {
            any |= self.delete(item)?;
        }
        Ok(any)
    }
}

fn parse_chunk_mark(head: &str) -> Option<(u64, usize)> {
    let rest = head.strip_prefix(CHUNK_MARK)?;
    let (g, n) = rest.split_once(':')?;
    Some((g.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(store: &MemoryStore, relay: &str) -> Keychain {
        Keychain::new(Arc::new(store.clone()), &Url::parse(relay).unwrap()).with_chunk_chars(10)
    }

    #[test]
    fn environments_are_namespaced_by_relay_url() {
        let store = MemoryStore::new();
        let prod = chain(&store, "https://gangway.example.com");
        let staging = chain(&store, "https://gangway.staging.example.com:8443/");
        prod.set(Item::Refresh, "p").unwrap();
        staging.set(Item::Refresh, "s").unwrap();
        assert_eq!(prod.get(Item::Refresh).unwrap().as_deref(), Some("p"));
        assert_eq!(staging.get(Item::Refresh).unwrap().as_deref(), Some("s"));
        assert_eq!(
            store.names(),
            [
                "https://gangway.example.com#refresh",
                "https://gangway.staging.example.com:8443#refresh"
            ]
        );
        prod.delete_all().unwrap();
        assert_eq!(prod.get(Item::Refresh).unwrap(), None);
        assert_eq!(staging.get(Item::Refresh).unwrap().as_deref(), Some("s"));
    }

    #[test]
    fn long_values_are_chunked_and_rotated_safely() {
        let store = MemoryStore::new();
        let k = chain(&store, "https://r.example");
        let long: String = (0..95).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        k.set(Item::Access, &long).unwrap();
        assert_eq!(k.get(Item::Access).unwrap().as_deref(), Some(&*long));
        // 10 chunks of generation 1 plus the head.
        assert_eq!(store.names().len(), 11);
        assert_eq!(
            store.get("https://r.example#access").unwrap().as_deref(),
            Some("gangway-chunks:1:10")
        );

        // A rotation writes generation 2, switches the head, drops generation 1.
        let longer = format!("{long}-rotated");
        k.set(Item::Access, &longer).unwrap();
        assert_eq!(k.get(Item::Access).unwrap().as_deref(), Some(&*longer));
        let names = store.names();
        assert!(names.iter().all(|n| !n.contains(".g1.")), "{names:?}");
        assert_eq!(names.len(), 12);

        // Back to a short value: the chunks go.
        k.set(Item::Access, "short").unwrap();
        assert_eq!(k.get(Item::Access).unwrap().as_deref(), Some("short"));
        assert_eq!(store.names(), ["https://r.example#access"]);

        // Non-ASCII is split on characters, not bytes.
        let wide = "é".repeat(25);
        k.set(Item::Access, &wide).unwrap();
        assert_eq!(k.get(Item::Access).unwrap().as_deref(), Some(&*wide));
        assert!(k.delete(Item::Access).unwrap());
        assert!(store.names().is_empty());
        assert!(!k.delete(Item::Access).unwrap());
    }

    #[test]
    fn a_crash_between_chunks_and_head_keeps_the_old_value() {
        let store = MemoryStore::new();
        let k = chain(&store, "https://r.example");
        let old = "x".repeat(30);
        k.set(Item::Refresh, &old).unwrap();
        // Simulate a half-written rotation: generation-2 chunks, head not switched.
        store.set("https://r.example#refresh.g2.0", "yyyy").unwrap();
        assert_eq!(k.get(Item::Refresh).unwrap().as_deref(), Some(&*old));
    }

    #[test]
    fn a_missing_chunk_is_reported() {
        let store = MemoryStore::new();
        let k = chain(&store, "https://r.example");
        k.set(Item::Refresh, &"z".repeat(25)).unwrap();
        store.delete("https://r.example#refresh.g1.1").unwrap();
        let e = k.get(Item::Refresh).unwrap_err().to_string();
        assert!(e.contains("chunk 1 of 3 is missing"), "{e}");
    }

    #[test]
    fn missing_dbus_becomes_a_clear_message() {
        let e = classify_platform_failure(
            "Platform secure storage failure: D-Bus error: Unable to autolaunch a dbus-daemon without a $DISPLAY for X11",
        )
        .unwrap()
        .to_string();
        assert!(e.contains("D-Bus session bus is not reachable"), "{e}");
        assert!(e.contains("GANGWAY_TOKEN"), "{e}");
        let e = classify_platform_failure(
            "The name org.freedesktop.secrets was not provided by any .service files",
        )
        .unwrap()
        .to_string();
        assert!(e.contains("nothing provides the Secret Service"), "{e}");
        assert!(classify_platform_failure("something else").is_none());
    }
}
