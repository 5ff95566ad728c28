//! Key–value stores of managed settings (macOS preferences, the Windows
//! registry) behind one trait, and the checks that turn their raw values
//! into policy values. The same checks serve the Linux TOML files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{
    Entry, Key, Kind, Level, Policy, PolicyEnvironment, PolicyProblem, PolicyStore, Value,
};

/// A value as a store holds it, before it is checked against its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    String(String),
    Bool(bool),
    Integer(i64),
    List(Vec<RawValue>),
    Dict(BTreeMap<String, RawValue>),
    /// A type no key takes ("a date"), refused by every key's check.
    Other(&'static str),
}

/// A source of managed values by key name ([`Key::managed_name`]).
pub trait ManagedValues {
    /// The value at `level`, if set, and where it was found.
    fn get(&self, level: Level, name: &str) -> Option<(RawValue, String)>;
}

/// Field names of an environment in a store.
pub(crate) struct EnvFields {
    pub name: &'static str,
    pub relay: &'static str,
    pub ca_file: &'static str,
}

pub(crate) const MANAGED_FIELDS: EnvFields = EnvFields {
    name: "Name",
    relay: "RelayURL",
    ca_file: "CAFile",
};

/// Checks a raw value against what `key` holds.
pub(crate) fn convert(key: Key, raw: RawValue, fields: &EnvFields) -> Result<Value, String> {
    let what = |raw: &RawValue| match raw {
        RawValue::String(_) => "a string",
        RawValue::Bool(_) => "a boolean",
        RawValue::Integer(_) => "a number",
        RawValue::List(_) => "a list",
        RawValue::Dict(_) => "a table",
        RawValue::Other(what) => what,
    };
    match (key.kind(), raw) {
        (Kind::String, RawValue::String(s)) if !s.trim().is_empty() => Ok(Value::String(s)),
        (Kind::String, RawValue::String(_)) => Err("is empty".into()),
        (Kind::Bool, RawValue::Bool(b)) => Ok(Value::Bool(b)),
        // The registry has no booleans: a DWORD 0 or 1.
        (Kind::Bool, RawValue::Integer(0)) => Ok(Value::Bool(false)),
        (Kind::Bool, RawValue::Integer(1)) => Ok(Value::Bool(true)),
        (Kind::StringList, RawValue::List(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                RawValue::String(s) if !s.trim().is_empty() => Ok(s),
                other => Err(format!(
                    "item {i} is {}, expected a host name",
                    what(&other)
                )),
            })
            .collect::<Result<_, _>>()
            .map(Value::StringList),
        (Kind::Environments, RawValue::List(items)) => {
            let mut envs: Vec<PolicyEnvironment> = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let RawValue::Dict(mut d) = item else {
                    return Err(format!("item {i} is not a table"));
                };
                let mut string = |field: &str, required: bool| match d.remove(field) {
                    Some(RawValue::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
                    None if !required => Ok(None),
                    None => Err(format!("[{i}].{field}: missing")),
                    Some(other) => Err(format!(
                        "[{i}].{field}: is {}, expected a string",
                        what(&other)
                    )),
                };
                let name = string(fields.name, true)?.unwrap_or_default();
                let relay = string(fields.relay, true)?.unwrap_or_default();
                let ca_file = string(fields.ca_file, false)?.map(PathBuf::from);
                if let Some(extra) = d.keys().next() {
                    return Err(format!("[{i}].{extra}: unknown field"));
                }
                if envs.iter().any(|e| e.name == name) {
                    return Err(format!("[{i}].{}: {name:?} is used twice", fields.name));
                }
                crate::config::parse_relay_url(&relay)
                    .map_err(|r| format!("[{i}].{}: {r}", fields.relay))?;
                envs.push(PolicyEnvironment {
                    name,
                    relay,
                    ca_file,
                });
            }
            Ok(Value::Environments(envs))
        }
        (kind, raw) => Err(format!(
            "is {}, expected {}",
            what(&raw),
            match kind {
                Kind::String => "a string",
                Kind::Bool => "a boolean",
                Kind::StringList => "a list of strings",
                Kind::Environments => "a list of environments",
            }
        )),
    }
}

/// A [`PolicyStore`] over any [`ManagedValues`].
pub struct ManagedStore<M>(pub M);

impl<M: ManagedValues> PolicyStore for ManagedStore<M> {
    fn load(&self) -> Policy {
        let mut policy = Policy::default();
        for level in [Level::Mandatory, Level::Recommended] {
            for key in Key::ALL {
                let Some((raw, origin)) = self.0.get(level, key.managed_name()) else {
                    continue;
                };
                match convert(key, raw, &MANAGED_FIELDS) {
                    Ok(value) => policy.set(level, key, Entry { value, origin }),
                    Err(reason) => policy.problems.push(PolicyProblem {
                        origin,
                        key: Some(key.managed_name().into()),
                        reason,
                    }),
                }
            }
        }
        policy
    }
}

/// Managed values in memory: how the macOS and Windows semantics are tested
/// on any machine.
#[derive(Debug, Default, Clone)]
pub struct MemoryValues {
    pub values: BTreeMap<(Level, String), RawValue>,
}

impl MemoryValues {
    pub fn set(&mut self, level: Level, name: &str, v: RawValue) -> &mut Self {
        self.values.insert((level, name.to_owned()), v);
        self
    }
}

impl ManagedValues for MemoryValues {
    fn get(&self, level: Level, name: &str) -> Option<(RawValue, String)> {
        self.values
            .get(&(level, name.to_owned()))
            .map(|v| (v.clone(), format!("memory:{level:?}/{name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> RawValue {
        RawValue::String(v.into())
    }

    fn env(name: &str, relay: &str) -> RawValue {
        RawValue::Dict(BTreeMap::from([
            ("Name".into(), s(name)),
            ("RelayURL".into(), s(relay)),
        ]))
    }

    #[test]
    fn forced_and_recommended_values_are_read_and_checked() {
        let mut m = MemoryValues::default();
        m.set(
            Level::Mandatory,
            "Environments",
            RawValue::List(vec![env("prod", "https://gw.example.com")]),
        )
        .set(
            Level::Mandatory,
            "AllowUserEnvironments",
            RawValue::Integer(0),
        )
        .set(
            Level::Recommended,
            "Proxy",
            s("http://proxy.example.com:3128"),
        )
        // A wrong type is a problem naming the key; the rest still counts.
        .set(Level::Mandatory, "StartAtLogin", s("yes"))
        .set(Level::Mandatory, "NotAKey", s("ignored"));
        let p = ManagedStore(m).load();
        assert_eq!(
            p.mandatory[&Key::Environments].value,
            Value::Environments(vec![PolicyEnvironment {
                name: "prod".into(),
                relay: "https://gw.example.com".into(),
                ca_file: None
            }])
        );
        assert_eq!(
            p.mandatory[&Key::AllowUserEnvironments].value,
            Value::Bool(false)
        );
        assert_eq!(
            p.recommended[&Key::Proxy].value,
            Value::String("http://proxy.example.com:3128".into())
        );
        assert!(!p.mandatory.contains_key(&Key::StartAtLogin));
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert_eq!(
            p.problems[0].to_string(),
            "memory:Mandatory/StartAtLogin: StartAtLogin: is a string, expected a boolean"
        );
    }

    #[test]
    fn environments_are_checked_field_by_field() {
        let bad = |v: RawValue| convert(Key::Environments, v, &MANAGED_FIELDS).unwrap_err();
        assert_eq!(
            bad(RawValue::List(vec![s("prod")])),
            "item 0 is not a table"
        );
        assert_eq!(
            bad(RawValue::List(vec![env("prod", "http://gw.example.com")])),
            "[0].RelayURL: \"http://gw.example.com\": plain http is only allowed for a loopback relay; use https"
        );
        assert_eq!(
            bad(RawValue::List(vec![
                env("a", "https://a.example"),
                env("a", "https://b.example")
            ])),
            "[1].Name: \"a\" is used twice"
        );
        let mut extra = BTreeMap::from([
            ("Name".into(), s("a")),
            ("RelayURL".into(), s("https://a.example")),
        ]);
        extra.insert("Port".into(), RawValue::Integer(1));
        assert_eq!(
            bad(RawValue::List(vec![RawValue::Dict(extra)])),
            "[0].Port: unknown field"
        );
        assert_eq!(
            convert(
                Key::AllowDeviceSignIn,
                RawValue::Integer(2),
                &MANAGED_FIELDS
            )
            .unwrap_err(),
            "is a number, expected a boolean"
        );
    }
}
