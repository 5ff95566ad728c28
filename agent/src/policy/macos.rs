//! macOS: the `com.gangway.agent` preference domain. A configuration
//! profile's payload for the domain makes its values *forced* (mandatory);
//! a Managed Client "Set-Once" value (recommended) is an ordinary value the
//! user may change.
//!
//! NOT COMPILED OR TESTED ON THE BUILD MACHINE (Linux, no macOS SDK): the
//! semantics are tested through [`super::MemoryValues`]; this file only maps
//! CFPreferences onto [`super::ManagedValues`].
#![allow(unsafe_code)] // CFPreferences is a C API; each call is commented.

use std::collections::BTreeMap;

use core_foundation::array::CFArray;
use core_foundation::base::{CFType, TCFType};
use core_foundation::boolean::CFBoolean;
use core_foundation::dictionary::CFDictionary;
use core_foundation::number::CFNumber;
use core_foundation::string::CFString;
use core_foundation_sys::preferences::{CFPreferencesAppValueIsForced, CFPreferencesCopyAppValue};

use super::managed::{ManagedValues, RawValue};
use super::Level;

const DOMAIN: &str = "com.gangway.agent";

pub struct CfPreferences {
    domain: CFString,
}

impl CfPreferences {
    pub fn new() -> Self {
        CfPreferences {
            domain: CFString::new(DOMAIN),
        }
    }
}

fn raw(v: &CFType) -> Option<RawValue> {
    if let Some(s) = v.downcast::<CFString>() {
        return Some(RawValue::String(s.to_string()));
    }
    if let Some(b) = v.downcast::<CFBoolean>() {
        return Some(RawValue::Bool(b.into()));
    }
    if let Some(n) = v.downcast::<CFNumber>() {
        return n.to_i64().map(RawValue::Integer);
    }
    if let Some(a) = v.downcast::<CFArray<CFType>>() {
        return a
            .iter()
            .map(|x| raw(&x))
            .collect::<Option<Vec<_>>>()
            .map(RawValue::List);
    }
    if let Some(d) = v.downcast::<CFDictionary<CFString, CFType>>() {
        let (keys, values) = d.get_keys_and_values();
        let mut out = BTreeMap::new();
        for (k, v) in keys.into_iter().zip(values) {
            // SAFETY: the dictionary's keys and values are CF objects it
            // retains for as long as `d` lives; we retain our own reference.
            let k = unsafe { CFString::wrap_under_get_rule(k as _) };
            let v = unsafe { CFType::wrap_under_get_rule(v) };
            out.insert(k.to_string(), raw(&v)?);
        }
        return Some(RawValue::Dict(out));
    }
    None
}

impl ManagedValues for CfPreferences {
    fn get(&self, level: Level, name: &str) -> Option<(RawValue, String)> {
        let key = CFString::new(name);
        // SAFETY: both arguments are valid CFStrings; the function returns a
        // +1 reference (the Copy rule) or null.
        let value = unsafe {
            CFPreferencesCopyAppValue(key.as_concrete_TypeRef(), self.domain.as_concrete_TypeRef())
        };
        if value.is_null() {
            return None;
        }
        // SAFETY: non-null +1 reference, released when `value` drops.
        let value = unsafe { CFType::wrap_under_create_rule(value) };
        // SAFETY: valid CFStrings.
        let forced = unsafe {
            CFPreferencesAppValueIsForced(
                key.as_concrete_TypeRef(),
                self.domain.as_concrete_TypeRef(),
            )
        } != 0;
        if forced != (level == Level::Mandatory) {
            return None;
        }
        let origin = format!(
            "{} preference {DOMAIN} {name}",
            if forced {
                "managed (forced)"
            } else {
                "recommended"
            }
        );
        Some((
            raw(&value).unwrap_or(RawValue::Other("an unsupported property-list type")),
            origin,
        ))
    }
}
