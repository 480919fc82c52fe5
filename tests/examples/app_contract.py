"""The contract the app code depends on, and the checks of the sources against it: each
returns the mismatches it finds, one line each, so a mutated source can be shown to be
reported."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from devicetune.artifacts.manifest import MANIFEST_FILE
from devicetune.artifacts.signing import SIGNATURE_FILE
from tests.examples.app_sources import (
    GATEWAY_FILES,
    block,
    calls,
    constants,
    lang_of,
    literal,
    split_args,
    string_literals,
    strip_comments,
)


@dataclass(frozen=True)
class Contract:
    """What a fresh build, an emitted version and the registry app really are."""

    manifest: dict[str, Any]            # the emitted version's manifest.json
    build_manifest: dict[str, Any]
    spec: dict[str, Any]                # Core ML feature names, roles and types
    documents: dict[str, list[Any]]     # JSON documents each source file reads
    client: Any                         # an httpx client of the running registry
    routes: list[Any]
    version: int
    version_files: set[str]             # what the registry holds for that version
    bundle: dict[str, Any]
    statement: dict[str, Any]
    public_pem: bytes


def feature_type(feature: Any) -> tuple[Any, ...]:
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        dtype = type(array).ArrayDataType.Name(array.dataType)
        return kind, dtype, list(array.shape)
    return (kind,)


def check_kotlin_signatures(sources: dict[str, str], c: Contract) -> list[str]:
    """Every ``runSignature(inputs, outputs, "name")`` and ``signature("name")`` lookup."""
    table = c.manifest["tflite"]["signatures"]
    problems: list[str] = []
    seen = 0
    for file, src in sources.items():
        if lang_of(file) != "kotlin":
            continue
        code = strip_comments(src, "kotlin")
        for args in calls(code, "runSignature", "kotlin"):
            seen += 1
            signature = literal(args[2]) if len(args) == 3 else None
            if signature is None or signature not in table:
                problems.append(f"{file}: runSignature(..., {args[-1]}): no such signature "
                                f"in manifest.json (has {sorted(table)})")
                continue
            names = {d: {t["name"]: t["dtype"] for t in table[signature][d]}
                     for d in ("inputs", "outputs")}
            for direction, expr in (("inputs", args[0]), ("outputs", args[1])):
                problems += check_map(file, code, signature, direction, expr, names)
        for name, direction, tensor in re.findall(
                r'signature\("([^"]*)"\)(?:\s*\.(input|output)\("([^"]*)"\))?', code):
            if name not in table:
                problems.append(f"{file}: signature(\"{name}\"): no such signature")
            elif direction and tensor not in {t["name"] for t in table[name][direction + "s"]}:
                problems.append(f"{file}: signature(\"{name}\").{direction}(\"{tensor}\"): "
                                f"no such {direction}")
    if seen == 0:
        problems.append("no runSignature call found in the Kotlin sources")
    return problems


def check_map(file: str, code: str, signature: str, direction: str, expr: str,
              names: dict[str, dict[str, str]]) -> list[str]:
    """One ``mapOf("name" to value, ...)`` argument of a runSignature call."""
    where = f"{file}: runSignature(..., \"{signature}\") {direction}"
    inner = re.fullmatch(r"mapOf\((.*)\)", expr, re.S)
    entries = [re.fullmatch(r'"([^"\\$]*)"\s+to\s+(.+)', e, re.S)
               for e in split_args(inner.group(1), "kotlin")] if inner else [None]
    if not inner or not all(entries):
        # Only the weights' names are data (tflite.weight_names), not code.
        return [] if signature in ("get_weights", "set_weights") else \
            [f"{where}: {expr!r} is not a mapOf(\"name\" to value) the checker can read"]
    used = {m.group(1): m.group(2).strip() for m in entries if m}
    other = "outputs" if direction == "inputs" else "inputs"
    problems = []
    for name, value in used.items():
        if name not in names[direction]:
            hint = f" (it is one of the {other})" if name in names[other] else ""
            problems.append(f"{where} '{name}' is not one of {sorted(names[direction])}{hint}")
            continue
        declared = set(re.findall(rf"val {re.escape(value)} = (Float|Int)Buffer\.allocate", code))
        dtype = {"Float": "float32", "Int": "int32"}
        if any(dtype[kind] != names[direction][name] for kind in declared):
            problems.append(f"{where} '{name}' is {names[direction][name]}, read into a "
                            f"{'/'.join(sorted(declared))}Buffer")
    if direction == "inputs" and set(used) < set(names["inputs"]):
        problems.append(f"{where} misses {sorted(set(names['inputs']) - set(used))}; "
                        "LiteRT needs every input")
    return problems


ROLES = ("input", "predictedLabel", "probabilities", "trainingInput", "trainingLabel")


def check_swift_features(sources: dict[str, str], c: Contract) -> list[str]:
    """DevicetuneFeatures' names in their roles, and no feature name used around them."""
    code = {f: strip_comments(s, "swift") for f, s in sources.items() if f.endswith(".swift")}
    features = constants(code["ModelManifest.swift"], r"enum DevicetuneFeatures", "swift")
    spec, manifest = c.spec, c.manifest
    problems = [f"DevicetuneFeatures.{k}: no role the checker knows" for k in features
                if k not in ROLES]
    problems += [f"DevicetuneFeatures.{k} is missing" for k in ROLES if k not in features]
    shape = ["multiArrayType", "FLOAT32", [1, *manifest["input_shape"]]]
    expect = {
        "input": (spec["inputs"], lambda t: list(t) == shape, "a float32 [1, *input_shape] input"),
        "predictedLabel": (spec["outputs"], lambda t: t == ("stringType",), "a String output"),
        "probabilities": (spec["outputs"], lambda t: t == ("dictionaryType",),
                          "a dictionary output"),
        "trainingInput": (spec["training"], lambda t: list(t) == shape,
                          "a float32 [1, *input_shape] training input"),
        "trainingLabel": (spec["training"], lambda t: t == ("stringType",),
                          "a String training input"),
    }
    for role, name in features.items():
        if role not in expect:
            continue
        where, fits, what = expect[role]
        if name not in where or not fits(where[name]):
            problems.append(f"DevicetuneFeatures.{role} = \"{name}\": the spec has no {what} "
                            f"named so (inputs {sorted(spec['inputs'])}, outputs "
                            f"{sorted(spec['outputs'])}, training {sorted(spec['training'])})")
    for role, actual in (("predictedLabel", spec["predicted"]),
                         ("probabilities", spec["probabilities"])):
        if features.get(role) not in (None, actual):
            problems.append(f"DevicetuneFeatures.{role} is not the classifier's {actual!r}")
    for role in ("trainingInput", "trainingLabel"):
        if features.get(role) not in manifest["coreml"]["training_inputs"]:
            problems.append(f"DevicetuneFeatures.{role} is not in coreml.training_inputs")
    # Every use site names a constant, never a string.
    for file, src in code.items():
        uses = [a[0] for a in calls(src, "featureValue", "swift")]
        uses += re.findall(r"DescriptionsByName\[([^\]]*)\]", src)
        for args in calls(src, "MLDictionaryFeatureProvider", "swift"):
            entries = re.fullmatch(r"dictionary:\s*\[(.*)\]", args[0], re.S)
            uses += [e.split(":", 1)[0] for e in split_args(entries.group(1), "swift")] \
                if entries else [args[0]]
        for use in uses:
            ref = re.fullmatch(r"(?:for:\s*)?DevicetuneFeatures\.(\w+)", use.strip())
            if not ref or ref.group(1) not in features:
                problems.append(f"{file}: feature name {use.strip()!r} does not come from "
                                "DevicetuneFeatures")
    return problems


def check_json_keys(sources: dict[str, str], c: Contract) -> list[str]:
    """Every key the Kotlin reads with org.json and every Swift CodingKeys raw value."""
    problems = []
    for file, src in sources.items():
        if file not in c.documents:  # reads no JSON document (the gateway clients' fields:
            continue                 # federation_contract, against the OpenAPI document)
        code = strip_comments(src, lang_of(file))
        if lang_of(file) == "kotlin":
            getters = r"(?:get|opt)(?:String|Int|Long|Double|Boolean|JSONObject|JSONArray)?"
            keys = re.findall(rf'\.{getters}\("([^"]*)"\)', code)
            keys += re.findall(r'\.(?:isNull|has)\("([^"]*)"\)', code)
        else:
            bodies = [block(code[m.start():], r"enum CodingKeys: String, CodingKey", "swift")
                      for m in re.finditer(r"enum CodingKeys", code)]
            decodables = re.findall(r"struct \w+: [^{]*\b(?:Decodable|Codable)\b", code)
            if len(bodies) != len(decodables):
                problems.append(f"{file}: {len(decodables)} Decodable structs but "
                                f"{len(bodies)} CodingKeys enums; give each explicit keys")
            keys = [m.group(2) or m.group(1).strip("`")
                    for body in bodies for case in re.findall(r"case ([^\n]+)", body)
                    for m in re.finditer(r'(`?\w+`?)(?:\s*=\s*"([^"]*)")?', case)]
            keys += re.findall(r'\w\["([^"]*)"\]', code)  # parameters["epochs"], ...
        allowed = set().union(*(json_keys(d) for d in c.documents.get(file, [])))
        problems += [f"{file}: reads JSON key {k!r}, which no document it reads has"
                     for k in keys if k not in allowed]
    return problems


def json_keys(document: Any) -> set[str]:
    if isinstance(document, dict):
        return set(document).union(*(json_keys(v) for v in document.values()))
    if isinstance(document, list):
        return set().union(*(json_keys(v) for v in document))
    return set()


def app_requests(sources: dict[str, str]) -> list[tuple[str, str, dict[str, str | None]]]:
    """(file, path template with {placeholders}, query name -> value) of every request."""
    found = []
    for file, src in sources.items():
        if file in GATEWAY_FILES:  # the device gateway's routes: federation_contract
            continue
        lang = lang_of(file)
        code = strip_comments(src, lang)
        placeholder = r"\$\{[^}]*\}|\$(\w+)" if lang == "kotlin" else r"\\\(([^()]*)\)"
        queries: dict[str, dict[str, str | None]] = {}
        for args in calls(code, "endpoint", lang):  # Swift: endpoint("/v1/...", query: [...])
            items = [(a[0].removeprefix("name:").strip(), a[1].removeprefix("value:").strip())
                     for a in calls(" ".join(args[1:]), "URLQueryItem", lang)]
            queries[args[0].strip('"')] = {literal(k) or k: literal(v) for k, v in items}
        for text in string_literals(code, lang):
            if not text.startswith("/v1/"):
                continue
            path, _, query = text.partition("?")
            params: dict[str, str | None] = {
                k: None if v.startswith("$") else v  # None: a value the app fills in
                for k, v in (p.split("=", 1) for p in query.split("&") if p)}
            params.update(queries.get(text, {}))
            found.append((file, re.sub(placeholder, lambda m: "{" + (m.group(1) or "x") + "}",
                                       path), params))
    return found


def check_registry_paths(sources: dict[str, str], c: Contract) -> list[str]:
    """Each path is a GET route of the registry app, with its query names, and answers."""
    from fastapi.routing import APIRoute

    problems = []
    requests = app_requests(sources)
    for lang in ("kotlin", "swift"):
        if not any(lang_of(f) == lang for f, _, _ in requests):
            problems.append(f"no registry path found in the {lang} sources")
    for file, template, params in requests:
        sample = re.sub(r"\{\w+\}", "1", template)
        route = next((r for r in c.routes if isinstance(r, APIRoute)
                      and "GET" in (r.methods or ()) and r.path_regex.match(sample)), None)
        if route is None:
            problems.append(f"{file}: GET {template} is not a route of the registry")
            continue
        declared = {p.alias for p in route.dependant.query_params}
        problems += [f"{file}: GET {template}?{k}=: the route has no query parameter {k!r} "
                     f"(it has {sorted(declared)})" for k in params if k not in declared]
        platform = "android" if file.endswith(".kt") else "ios"
        model_file = c.manifest["tflite" if platform == "android" else "coreml"]["file"]
        values = {"name": c.manifest["name"], "version": str(c.version)}
        for file_name in (SIGNATURE_FILE, model_file) if "{file}" in template else (None,):
            url = template.format(**values, file=file_name) if "{" in template else template
            query = {k: "device-1" if v is None else v for k, v in params.items()}
            answer = c.client.get(url, params=query)
            if answer.status_code != 200:
                problems.append(f"{file}: GET {url} {query}: HTTP {answer.status_code} "
                                f"{answer.text[:200]}")
    return problems


def check_file_names(sources: dict[str, str], c: Contract) -> list[str]:
    """The files the verifiers read are the ones the emitter writes and the registry serves."""
    kotlin = constants(strip_comments(sources["ModelManifest.kt"], "kotlin"),
                       r"object VersionFiles", "kotlin")
    swift = constants(strip_comments(sources["ModelManifest.swift"], "swift"),
                      r"enum VersionFiles", "swift")
    expected = {
        "kotlin": {"MANIFEST_FILE": MANIFEST_FILE, "SIGNATURE_FILE": SIGNATURE_FILE,
                   "MODEL_FILE": c.manifest["tflite"]["file"]},
        "swift": {"manifestFile": MANIFEST_FILE, "signatureFile": SIGNATURE_FILE,
                  "modelFile": c.manifest["coreml"]["file"]},
    }
    problems = []
    for lang, found in (("kotlin", kotlin), ("swift", swift)):
        if found != expected[lang]:
            problems.append(f"{lang} VersionFiles {found} != what devicetune writes "
                            f"{expected[lang]}")
        problems += [f"{lang}: {v} is not a file of the emitted version"
                     for v in found.values() if v not in c.version_files]
    # The first version an app ships is the build itself: the same model file names.
    for kind in ("tflite", "coreml"):
        if c.build_manifest[kind]["file"] != c.manifest[kind]["file"]:
            problems.append(f"the build's {kind}.file differs from the emitted version's")
    return problems


def check_signing_constants(sources: dict[str, str], c: Contract) -> list[str]:
    """The verifiers' format constants are those of a real model.sig."""
    kotlin = constants(strip_comments(sources["SignatureVerifier.kt"], "kotlin"), None,
                       "kotlin")
    swift = constants(strip_comments(sources["SignatureVerifier.swift"], "swift"),
                      r"struct SignatureVerifier: Sendable", "swift")
    envelope = c.bundle["dsseEnvelope"]
    actual = {"payload": envelope["payloadType"], "statement": c.statement["_type"],
              "predicate": c.statement["predicateType"]}
    problems = []
    for lang, found, names in (
            ("kotlin", kotlin, ("BUNDLE_MEDIA_TYPE_PREFIX", "PAYLOAD_TYPE", "STATEMENT_TYPE",
                                "PREDICATE_TYPE")),
            ("swift", swift, ("bundleMediaTypePrefix", "payloadType", "statementType",
                              "predicateType"))):
        prefix, payload, statement, predicate = (found.get(n) for n in names)
        if not prefix or not c.bundle["mediaType"].startswith(prefix):
            problems.append(f"{lang}: bundle media type prefix {prefix!r} does not match "
                            f"{c.bundle['mediaType']!r}")
        for what, value in (("payload", payload), ("statement", statement),
                            ("predicate", predicate)):
            if value != actual[what]:
                problems.append(f"{lang}: {what} type {value!r} != model.sig's {actual[what]!r}")
    return problems


CHECKS = (check_kotlin_signatures, check_swift_features, check_json_keys,
          check_registry_paths, check_file_names, check_signing_constants)


def all_problems(sources: dict[str, str], c: Contract) -> list[str]:
    return [p for check in CHECKS for p in check(sources, c)]


# ----------------------------------------------------------------------------- tests

