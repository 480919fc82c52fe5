"""The federation protocol as the app code uses it, checked against the gateway's served
OpenAPI document: every route (with its method), every field read or written, the fields a
request must carry, and the order of the protocol steps. Each check returns one line per
mismatch, so a mutated source can be shown to be reported."""

from __future__ import annotations

import re
from typing import Any

from tests.examples.app_sources import GATEWAY_FILES, lang_of, strip_comments

# The files that speak protocol v1 (the Kotlin one compiled and run, the Swift one not).
GATEWAY_CLIENTS = tuple(sorted(GATEWAY_FILES))
# Keys of the safetensors header (the format, not the API; https://huggingface.co/docs/
# safetensors): the Swift client codes it in the same file.
SAFETENSORS_KEYS = {"__metadata__", "dtype", "shape", "data_offsets"}
STEPS = ["enroll", "checkin", "model", "weights", "report"]


def requests(code: str) -> list[tuple[str, str]]:
    """(method, path with {x} placeholders) of every ``request("METHOD", "/v1/...")``."""
    found = re.findall(r'\brequest\(\s*"([A-Z]+)",\s*"(/v1/[^"]*)"', code)
    return [(method, re.sub(r"\$\{[^}]*\}|\\\([^()]*\)", "{x}", path)) for method, path in found]


def fields(code: str, lang: str) -> tuple[set[str], set[str]]:
    """(fields read, fields written) by a client."""
    if lang == "kotlin":
        read = set(re.findall(r'\.field\("(\w+)"\)', code))
        written = set(re.findall(r'"(\w+)" to\b', code))
    else:
        read = set(re.findall(r'\bfield\(\w+, "(\w+)"\)', code))
        read |= set(re.findall(r'\w\["(\w+)"\]', code))
        written = set(re.findall(r'"(\w+)":', code))
    return read, written


def document_fields(openapi: dict[str, Any]) -> set[str]:
    """Every property of every schema, and the report's metadata names (``name`` in the
    report operation's description)."""
    names = {p for s in openapi["components"]["schemas"].values()
             for p in s.get("properties", {})}
    for item in openapi["paths"].values():
        for operation in item.values():
            names |= set(re.findall(r"``(\w+)``", operation.get("description", "")))
    return names


def route_of(openapi: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    sample = path.replace("{x}", "1")
    for template, item in openapi["paths"].items():
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, sample) and method.lower() in item:
            return item[method.lower()]
    return None


def required_fields(openapi: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is None:
        return set()
    ref = body["schema"].get("$ref", "")
    schema = openapi["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return set(schema.get("required", []))


def check_gateway_protocol(sources: dict[str, str], openapi: dict[str, Any]) -> list[str]:
    """Each route the clients call is in the document with that method; each JSON field
    they read or write is one of the document's; each request sends the required fields."""
    problems = []
    known = document_fields(openapi) | SAFETENSORS_KEYS
    for file in GATEWAY_CLIENTS:
        lang = lang_of(file)
        code = strip_comments(sources[file], lang)
        called = requests(code)
        if len(called) < 3:
            problems.append(f"{file}: found {len(called)} gateway requests, expected "
                            "enroll, check-in and report")
        read, written = fields(code, lang)
        for method, path in called:
            operation = route_of(openapi, method, path)
            if operation is None:
                problems.append(f"{file}: {method} {path} is not a route of the served "
                                "OpenAPI document")
                continue
            missing = required_fields(openapi, operation) - written
            problems += [f"{file}: {method} {path} does not send the required field {m!r}"
                         for m in sorted(missing)]
        problems += [f"{file}: uses the field {name!r}, which the served OpenAPI document "
                     "does not have" for name in sorted((read | written) - known)]
    return problems


def protocol_steps(src: str, lang: str) -> list[str]:
    """The protocol steps a client takes, in order: enroll, then the calls of its cycle
    function (``runCycle``), each function named by the route or task URL it uses (or by
    the step function it calls)."""
    code = strip_comments(src, lang)
    keyword = "fun" if lang == "kotlin" else "func"
    heads = list(re.finditer(rf"\b{keyword} (\w+)\(", code))
    chunks = {m.group(1): code[m.end():heads[i + 1].start() if i + 1 < len(heads) else None]
              for i, m in enumerate(heads)}
    markers = {"enroll": r'"/v1/enroll"', "checkin": r'"/v1/checkin"',
               "model": r"\bmodelU(?:rl|RL)\b", "weights": r"\bweightsU(?:rl|RL)\b",
               "report": r'/report"'}

    def direct(name: str) -> str | None:
        found = [s for s, marker in markers.items() if re.search(marker, chunks[name])]
        return found[0] if len(found) == 1 else None

    def step(name: str) -> str | None:
        if name not in chunks or name == "runCycle":
            return None
        if (own := direct(name)) is not None:
            return own
        inner = [direct(c) for c in re.findall(r"\b(\w+)\(", chunks[name]) if c in chunks]
        inner = [s for s in inner if s is not None]
        return inner[0] if len(set(inner)) == 1 else None

    if "runCycle" not in chunks:
        return []
    cycle = [step(c) for c in re.findall(r"\b(\w+)\(", chunks["runCycle"])]
    steps = ["enroll"] if any(direct(n) == "enroll" for n in chunks) else []
    for s in cycle:
        if s is not None and (not steps or steps[-1] != s):
            steps.append(s)
    return steps


def check_protocol_order(sources: dict[str, str]) -> list[str]:
    """Kotlin and Swift take the reference phone's steps in its order (the Kotlin client's
    running trace is compared with the phone's in test_kotlin_client.py)."""
    problems = []
    for file in GATEWAY_CLIENTS:
        found = protocol_steps(sources[file], lang_of(file))
        if found != STEPS:
            problems.append(f"{file}: protocol steps {found}, the reference phone takes {STEPS}")
    return problems


def check_recipe_defaults(sources: dict[str, str]) -> list[str]:
    """RecipeDefaults (PersonalizationRecipe.kt) are fleet.personalization's defaults for
    seen_rerank, and the fold block is the simulator's."""
    import inspect

    from devicetune.config.fleet import PersonalizationConfig
    from devicetune.fleet.personalize import validation_folds

    config = PersonalizationConfig()
    expected = {"EPOCHS": config.epochs, "CHOOSE_EPOCHS": config.choose_epochs,
                "VALIDATION_FRACTION": config.validation_fraction, "GATE": config.gate,
                "GATE_MARGIN": config.margin,
                "FOLD_BLOCK": inspect.signature(validation_folds).parameters["block"].default}
    code = strip_comments(sources["PersonalizationRecipe.kt"], "kotlin")
    found = dict(re.findall(r"const val (\w+) = ([^\n]+)", code))
    problems = []
    if config.method != "seen_rerank" or config.blend != "global_error":
        problems.append(f"the simulator's default recipe is {config.method} with blend "
                        f"{config.blend!r}; PersonalizationRecipe.kt implements seen_rerank "
                        "with global_error")
    for name, value in expected.items():
        text = found.get(name, "").strip()
        parsed: Any = text == "true" if text in ("true", "false") else \
            float(text) if text else None
        if parsed is None or parsed != value or (isinstance(value, bool)
                                                 != isinstance(parsed, bool)):
            problems.append(f"PersonalizationRecipe.kt: {name} = {text or 'missing'}, the "
                            f"simulator's default is {value!r}")
    return problems


def check_decryption(sources: dict[str, str], encrypted_manifest: dict[str, Any]) -> list[str]:
    """VersionDecryption.kt and .swift read only keys a real encrypted manifest has, and
    name the scheme and the suffix artifacts/encryption.py writes."""
    from devicetune.artifacts.encryption import ENCRYPTED_SUFFIX, SCHEME
    from tests.examples.app_contract import json_keys

    problems = []
    keys = json_keys(encrypted_manifest)
    for file, constant in (("VersionDecryption.kt", r'const val (\w+) = "([^"]*)"'),
                           ("VersionDecryption.swift", r'static let (\w+) = "([^"]*)"')):
        code = strip_comments(sources[file], lang_of(file))
        used = re.findall(r'\w\["(\w+)"\]', code)
        if not used:
            problems.append(f"{file}: reads no manifest key")
        problems += [f"{file}: reads {k!r}, which an encrypted manifest does not have"
                     for k in sorted(set(used) - keys)]
        found = {name.lower(): value for name, value in re.findall(constant, code)}
        for name, value in (("scheme", SCHEME), ("encrypted_suffix", ENCRYPTED_SUFFIX)):
            if found.get(name, found.get(name.replace("_", ""))) != value:
                problems.append(f"{file}: {name} is {found.get(name)!r}, devicetune writes "
                                f"{value!r}")
    return problems
