#!/usr/bin/env python3
"""Checks the generated policy templates against installer/policy/schema.toml.

    installer/policy/verify.py [GENERATED_DIR]

- both .mobileconfig files parse with plistlib, hold exactly the schema's keys
  with values of the schema's types, forced in one and Set-Once in the other;
- the Jamf schema lists exactly the schema's keys;
- every $(string.X) and $(presentation.X) of the ADMX resolves in the ADML,
  every presentation's refIds are element ids of its policy, and each key has
  a mandatory and a recommended policy on the right registry key;
- the Linux examples are valid TOML and name only schema keys.
Prints one line per problem and exits 1 if there is any.
"""

import json
import plistlib
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from generate import load_schema  # noqa: E402

NS = {"p": "http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions"}
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def check_type(where, key, value):
    t = key["type"]
    ok = {
        "string": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "string_list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "environments": lambda v: isinstance(v, list)
        and all(isinstance(e, dict) and {"Name", "RelayURL"} <= set(e) and set(e) <= {"Name", "RelayURL", "CAFile"} for e in v),
    }[t](value)
    if not ok:
        problem(where, f"{key['plist']}: {value!r} is not a {t}")


def check_settings(where, settings, schema):
    want = {k["plist"]: k for k in schema["key"]}
    for name in sorted(set(want) - set(settings)):
        problem(where, f"missing key {name}")
    for name in sorted(set(settings) - set(want)):
        problem(where, f"key {name} is not in the schema")
    for name, v in settings.items():
        if name in want:
            check_type(where, want[name], v)


def check_macos(gen, schema):
    domain = schema["preference_domain"]
    path = gen / "macos" / f"{domain}.mobileconfig"
    with open(path, "rb") as f:
        profile = plistlib.load(f)
    if profile.get("PayloadType") != "Configuration":
        problem(path, "PayloadType is not Configuration")
    payloads = profile.get("PayloadContent", [])
    if len(payloads) != 1 or payloads[0].get("PayloadType") != domain:
        problem(path, f"expected one payload of type {domain}")
    else:
        settings = {k: v for k, v in payloads[0].items() if not k.startswith("Payload")}
        check_settings(path, settings, schema)

    path = gen / "macos" / f"{domain}.recommended.mobileconfig"
    with open(path, "rb") as f:
        profile = plistlib.load(f)
    try:
        (payload,) = profile["PayloadContent"]
        assert payload["PayloadType"] == "com.apple.ManagedClient.preferences"
        (once,) = payload["PayloadContent"][domain]["Set-Once"]
        check_settings(path, once["mcx_preference_settings"], schema)
    except (KeyError, ValueError, AssertionError) as e:
        problem(path, f"not a Set-Once ManagedClient payload for {domain} ({e!r})")

    path = gen / "macos" / f"{domain}.json"
    props = json.loads(path.read_text())["properties"]
    if set(props) != {k["plist"] for k in schema["key"]}:
        problem(path, "properties differ from the schema's keys")


def refs(text, kind):
    return re.findall(r"\$\(" + kind + r"\.([A-Za-z0-9_]+)\)", text)


def check_windows(gen, schema):
    admx_path = gen / "windows" / "gangway.admx"
    adml_path = gen / "windows" / "en-US" / "gangway.adml"
    admx = ET.parse(admx_path).getroot()
    adml = ET.parse(adml_path).getroot()
    strings = {s.get("id") for s in adml.iterfind(".//p:stringTable/p:string", NS)}
    presentations = {p.get("id"): p for p in adml.iterfind(".//p:presentationTable/p:presentation", NS)}
    text = admx_path.read_text()
    for s in refs(text, "string"):
        if s not in strings:
            problem(admx_path, f"$(string.{s}) is not in {adml_path.name}")
    for p in refs(text, "presentation"):
        if p not in presentations:
            problem(admx_path, f"$(presentation.{p}) is not in {adml_path.name}")
    categories = {c.get("name") for c in admx.iterfind(".//p:categories/p:category", NS)}
    policies = {p.get("name"): p for p in admx.iterfind(".//p:policies/p:policy", NS)}
    base = schema["registry_key"]
    for k in schema["key"]:
        for name, key in ((k["plist"], base), (k["plist"] + "_Recommended", base + "\\Recommended")):
            pol = policies.get(name)
            if pol is None:
                problem(admx_path, f"no policy {name}")
                continue
            if pol.get("key") != key:
                problem(admx_path, f"policy {name} writes {pol.get('key')}, not {key}")
            parent = pol.find("p:parentCategory", NS)
            if parent is None or parent.get("ref") not in categories:
                problem(admx_path, f"policy {name}: parent category does not resolve")
            ids = {e.get("id") for e in pol.iterfind("p:elements/*", NS)}
            pres_ref = pol.get("presentation")
            if pres_ref:
                pres = presentations.get(refs(pres_ref, "presentation")[0])
                if pres is not None:
                    for el in pres:
                        if el.get("refId") not in ids:
                            problem(adml_path, f"presentation {name}: refId {el.get('refId')} is no element of the policy")
            elif ids:
                problem(admx_path, f"policy {name} has elements but no presentation")
    for name in policies:
        if name.removesuffix("_Recommended") not in {k["plist"] for k in schema["key"]}:
            problem(admx_path, f"policy {name} is not in the schema")


def check_linux(gen, schema):
    names = {k["name"] for k in schema["key"]}
    for d in ("policy.d", "recommended.d"):
        path = gen / "linux" / d / "00-example.toml"
        # The example is commented out; uncommented it must be valid and known.
        body = "\n".join(
            line[2:] for line in path.read_text().splitlines() if re.match(r"# ([a-z_]+ = |\[\[)", line)
        )
        try:
            doc = tomllib.loads(body)
        except tomllib.TOMLDecodeError as e:
            problem(path, f"uncommented example is not TOML: {e}")
            continue
        for key in sorted(set(doc) - names):
            problem(path, f"{key} is not in the schema")
        for key in sorted(names - set(doc)):
            problem(path, f"{key} has no example")


def main(argv):
    gen = Path(argv[0]) if argv else HERE / "generated"
    schema = load_schema()
    check_macos(gen, schema)
    check_windows(gen, schema)
    check_linux(gen, schema)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
