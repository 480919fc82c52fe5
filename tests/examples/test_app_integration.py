"""The app code in examples/app_integration against what devicetune really emits.

The Kotlin and Swift cannot be compiled here, so this checks the contract they depend on:
every LiteRT signature, input and output name the Kotlin passes to ``runSignature``, every
Core ML feature name the Swift uses (in its role: input, output, training input), every
JSON key either reads, every registry path either requests, and the file names and
signature-format constants of their verifiers, all against a fresh build, a version
emitted and signed by `VersionEmitter`, and the real registry app. The checker reads the
sources themselves (comments stripped), so it checks what the code uses, and a test feeds
it mutated sources to show it reports each kind of mismatch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetune.artifacts.manifest import MANIFEST_FILE
from devicetune.artifacts.signing import SIGNATURE_FILE
from tests.conftest import PROJECT_ROOT, small_config

APP_DIR = PROJECT_ROOT / "examples" / "app_integration"
KOTLIN = {"DevicetuneModel.kt", "ModelManifest.kt", "ModelUpdater.kt", "SignatureVerifier.kt"}
SWIFT = {"DevicetuneModel.swift", "ModelManifest.swift", "ModelUpdater.swift",
         "SignatureVerifier.swift"}

# ----------------------------------------------------------------------------- reading


def lang_of(file: str) -> str:
    return "kotlin" if file.endswith(".kt") else "swift"


def skip_string(src: str, i: int, lang: str) -> int:
    """Index just past the string literal starting at ``src[i]`` (templates included)."""
    quote = '"""' if src.startswith('"""', i) else '"'
    j = i + len(quote)
    while j < len(src):
        if src.startswith(quote, j):
            return j + len(quote)
        if lang == "swift" and src.startswith("\\(", j):
            j = skip_code(src, j + 2, ")", lang)
        elif lang == "kotlin" and src.startswith("${", j):
            j = skip_code(src, j + 2, "}", lang)
        elif src[j] == "\\":
            j += 2
        elif src[j] == "\n" and quote == '"':
            raise ValueError(f"unterminated string at {src[i:i + 40]!r}")
        else:
            j += 1
    raise ValueError(f"unterminated string at {src[i:i + 40]!r}")


def skip_code(src: str, j: int, closer: str, lang: str) -> int:
    """Index just past the ``closer`` that balances the bracket opened before ``src[j]``."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [closer]
    while j < len(src):
        c = src[j]
        if c == '"':
            j = skip_string(src, j, lang)
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c == stack[-1]:
            stack.pop()
            if not stack:
                return j + 1
        j += 1
    raise ValueError(f"unbalanced {closer!r}")


def strip_comments(src: str, lang: str) -> str:
    """The source with every comment blanked out and every string kept."""
    out, i = [], 0
    while i < len(src):
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = len(src) if j < 0 else j
        elif src.startswith("/*", i):
            depth, j = 0, i
            while j < len(src):  # both languages nest block comments
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                    if depth == 0:
                        break
                else:
                    j += 1
        elif src[i] == '"':
            j = skip_string(src, i, lang)
            out.append(src[i:j])
            i = j
            continue
        else:
            out.append(src[i])
            i += 1
            continue
        out.append(re.sub(r"[^\n]", " ", src[i:j]))
        i = j
    return "".join(out)


def split_args(text: str, lang: str) -> list[str]:
    """Top-level comma-separated parts of an argument or element list."""
    parts, depth, start, j = [], 0, 0, 0
    while j < len(text):
        c = text[j]
        if c == '"':
            j = skip_string(text, j, lang)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:j])
            start = j + 1
        j += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def calls(code: str, name: str, lang: str) -> list[list[str]]:
    """The argument lists of every call ``name(...)`` in ``code``."""
    found = []
    for match in re.finditer(rf"\b{re.escape(name)}\(", code):
        end = skip_code(code, match.end(), ")", lang)
        found.append(split_args(code[match.end():end - 1], lang))
    return found


def literal(expr: str) -> str | None:
    """The value of a plain string literal (no template), else None."""
    match = re.fullmatch(r'"([^"\\$]*)"', expr.strip())
    return match.group(1) if match else None


def string_literals(code: str, lang: str) -> list[str]:
    """The raw text of every string literal, templates included."""
    found, i = [], 0
    while i < len(code):
        if code[i] == '"':
            j = skip_string(code, i, lang)
            found.append(code[i + 1:j - 1])
            i = j
        else:
            i += 1
    return found


def block(code: str, header: str, lang: str) -> str:
    """The body of the first ``header {...}`` block."""
    match = re.search(header + r"\s*\{", code)
    assert match, f"no {header!r} block"
    return code[match.end():skip_code(code, match.end(), "}", lang) - 1]


def constants(code: str, header: str | None, lang: str) -> dict[str, str]:
    """``const val NAME = "v"`` (Kotlin) or ``static let name = "v"`` (Swift) of a block
    (of the whole source when ``header`` is None)."""
    pattern = r'const val (\w+) = "([^"]*)"' if lang == "kotlin" \
        else r'static let (\w+) = "([^"]*)"'
    return dict(re.findall(pattern, code if header is None else block(code, header, lang)))


def read_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(APP_DIR.glob("*/*"))
            if p.suffix in (".kt", ".swift")}


# ----------------------------------------------------------------------------- contract


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


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory,
             small_artifacts: Path) -> Iterator[Contract]:
    import httpx

    from devicetune.artifacts.emit import VersionEmitter
    from devicetune.artifacts.keys import generate_key_pair
    from devicetune.device.litert import LiteRTModel
    from devicetune.export.coreml_files import load_spec
    from devicetune.registry import Registry, RegistryServer
    from devicetune.registry.api import create_app

    base = tmp_path_factory.mktemp("app-integration")
    keys = generate_key_pair(base / "keys")
    config = small_config(emit={"enabled": True, "registry": str(base / "registry"),
                                "private_key": str(keys.private_key)})
    emitter = VersionEmitter(config, small_artifacts, base / "run", {"accuracy": 0.5})
    build_manifest = json.loads((small_artifacts / MANIFEST_FILE).read_text())
    start = LiteRTModel(small_artifacts / "model.tflite").get_weights()
    weights = [start[n] * 1.01 for n in build_manifest["tflite"]["weight_names"]]
    outcome = emitter.emit(1, weights, {"accuracy": 0.5})
    assert outcome.emitted, outcome.reason
    registry = Registry(base / "registry")
    record = registry.record(config.name, outcome.version)
    folder = base / "version"
    folder.mkdir()
    for name in record.files:
        (folder / name).write_bytes(registry.file(config.name, outcome.version, name)[0]
                                    .read_bytes())
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    spec = load_spec(folder / manifest["coreml"]["file"])
    description = spec.description
    bundle = json.loads((folder / SIGNATURE_FILE).read_bytes())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    manifests = [manifest, build_manifest]
    with RegistryServer(registry, token=None) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        latest = client.get(f"/v1/models/{config.name}/latest",
                            params={"device_id": "device-1", "platform": "android"})
        assert latest.status_code == 200, latest.text
        yield Contract(
            manifest=manifest, build_manifest=build_manifest,
            spec={"inputs": {f.name: feature_type(f) for f in description.input},
                  "outputs": {f.name: feature_type(f) for f in description.output},
                  "training": {f.name: feature_type(f) for f in description.trainingInput},
                  "predicted": description.predictedFeatureName,
                  "probabilities": description.predictedProbabilitiesName},
            documents={"ModelManifest.kt": manifests, "ModelManifest.swift": manifests,
                       "DevicetuneModel.kt": manifests, "DevicetuneModel.swift": manifests,
                       "SignatureVerifier.kt": [bundle, statement],
                       "SignatureVerifier.swift": [bundle, statement],
                       "ModelUpdater.kt": [latest.json()], "ModelUpdater.swift": [latest.json()]},
            client=client, routes=list(create_app(registry, token=None).routes),
            version=outcome.version,
            version_files=set(record.files), bundle=bundle, statement=statement,
            public_pem=keys.public_key.read_bytes())


# ----------------------------------------------------------------------------- checks


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


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    found = read_sources()
    assert set(found) == KOTLIN | SWIFT
    return found


def test_kotlin_signature_names_are_in_a_fresh_build(sources: dict[str, str],
                                                     contract: Contract) -> None:
    assert check_kotlin_signatures(sources, contract) == []
    used = {literal(a[2]) for f in KOTLIN
            for a in calls(strip_comments(sources[f], "kotlin"), "runSignature", "kotlin")}
    # The app calls every signature the artifact has.
    assert used == set(contract.manifest["tflite"]["signatures"])


def test_swift_feature_names_are_in_the_fresh_core_ml_spec(sources: dict[str, str],
                                                           contract: Contract) -> None:
    assert check_swift_features(sources, contract) == []


def test_json_keys_the_apps_read_exist(sources: dict[str, str], contract: Contract) -> None:
    assert check_json_keys(sources, contract) == []


def test_registry_paths_are_routes_that_answer(sources: dict[str, str],
                                               contract: Contract) -> None:
    assert check_registry_paths(sources, contract) == []
    templates = {t for _, t, _ in app_requests(sources)}
    assert any(t.endswith("/latest") for t in templates)
    assert any(t.endswith("/files/{file}") for t in templates)


def test_file_names_are_the_ones_the_emitter_writes(sources: dict[str, str],
                                                    contract: Contract) -> None:
    assert check_file_names(sources, contract) == []


def test_the_apps_verification_accepts_a_real_signature_and_nothing_else(
        sources: dict[str, str], contract: Contract) -> None:
    """The scheme SignatureVerifier.kt / .swift implement, step by step, on a real model.sig."""
    assert check_signing_constants(sources, contract) == []
    key = serialization.load_pem_public_key(contract.public_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    envelope = contract.bundle["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])

    def pae(body: bytes) -> bytes:
        kind = envelope["payloadType"].encode()
        return b"DSSEv1 %d %s %d " % (len(kind), kind, len(body)) + body

    signature = base64.b64decode(envelope["signatures"][0]["sig"])
    key.verify(signature, pae(payload), ec.ECDSA(hashes.SHA256()))
    tampered = payload.replace(b'"digest": "', b'"digest": "0', 1)
    with pytest.raises(InvalidSignature):
        key.verify(signature, pae(tampered), ec.ECDSA(hashes.SHA256()))
    resources = contract.statement["predicate"]["resources"]
    digests = {r["name"]: r["digest"] for r in resources}
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert contract.statement["subject"][0]["digest"]["sha256"] == root
    # The check both verifiers make: the signature lists exactly manifest.json and its files.
    assert set(digests) == set(contract.manifest["files"]) | {MANIFEST_FILE}
    assert all(digests[n] == h for n, h in contract.manifest["files"].items())


MUTATIONS = [
    ("DevicetuneModel.kt", '"mask" to batch.mask),\n                    mapOf("loss" to loss), '
     '"train")', '"masks" to batch.mask),\n                    mapOf("loss" to loss), "train")',
     "'masks'"),
    ("DevicetuneModel.kt", 'mapOf("x" to x), mapOf("probabilities" to probabilities), "infer"',
     'mapOf("probabilities" to x), mapOf("x" to probabilities), "infer"', "one of the outputs"),
    ("DevicetuneModel.kt", ', "mask" to batch.mask),\n                mapOf("loss" to loss, '
     '"correct" to correct)', '),\n                mapOf("loss" to loss, "correct" to correct)',
     "misses ['mask']"),
    ("DevicetuneModel.kt", 'mapOf("ok" to ok), "configure")', 'mapOf("ok" to ok), "setup")',
     "setup"),
    ("DevicetuneModel.kt", "val ok = IntBuffer.allocate(1)\n        interpreter.runSignature(map"
     "Of(\"learning_rate\"", "val ok = FloatBuffer.allocate(1)\n        interpreter.runSignatu"
     "re(mapOf(\"learning_rate\"", "int32, read into a Float"),
    ("ModelManifest.kt", 'getInt("batch_size")', 'getInt("batchSize")', "'batchSize'"),
    ("SignatureVerifier.kt", 'getString("payloadType")', 'getString("payload_type")',
     "'payload_type'"),
    ("ModelUpdater.kt", '"/v1/models/$name/latest?', '"/v1/model/$name/latest?',
     "not a route"),
    ("ModelUpdater.kt", "&platform=android", "&os=android", "'os'"),
    ("ModelUpdater.kt", "/versions/$version/files/$file", "/versions/$version/file/$file",
     "not a route"),
    ("ModelManifest.kt", 'SIGNATURE_FILE = "model.sig"', 'SIGNATURE_FILE = "signature.sig"',
     "signature.sig"),
    ("SignatureVerifier.kt", 'PREDICATE_TYPE = "https://model_signing/signature/v1.0"',
     'PREDICATE_TYPE = "https://model_signing/signature/v2.0"', "v2.0"),
    ("ModelManifest.swift", 'static let predictedLabel = "label"',
     'static let predictedLabel = "classLabel"', "classLabel"),
    ("ModelManifest.swift", 'static let input = "x"', 'static let input = "label"',
     "DevicetuneFeatures.input"),
    ("DevicetuneModel.swift", "featureValue(for: DevicetuneFeatures.probabilities)",
     'featureValue(for: "probabilities")', "does not come from DevicetuneFeatures"),
    ("SignatureVerifier.swift", 'case type = "_type"', 'case type = "type"', "'type'"),
    ("DevicetuneModel.swift", 'coreml.parameters["learning_rate"]',
     'coreml.parameters["learningRate"]', "'learningRate'"),
    ("ModelUpdater.swift", 'URLQueryItem(name: "platform"', 'URLQueryItem(name: "os"',
     "'os'"),
    ("ModelUpdater.swift", '"/v1/models/\\(name)/versions/\\(version)/manifest"',
     '"/v1/models/\\(name)/version/\\(version)/manifest"', "not a route"),
    ("ModelManifest.swift", 'modelFile = "Model.mlmodel"', 'modelFile = "model.mlmodel"',
     "model.mlmodel"),
]


@pytest.mark.parametrize(("file", "old", "new", "reported"), MUTATIONS,
                         ids=[f"{m[0]}:{m[3]}" for m in MUTATIONS])
def test_the_checker_reports_a_mismatch(sources: dict[str, str], contract: Contract, file: str,
                                        old: str, new: str, reported: str) -> None:
    assert sources[file].count(old) == 1, f"the mutation does not apply to {file}"
    found = all_problems({**sources, file: sources[file].replace(old, new)}, contract)
    assert any(reported in p for p in found), found
