"""Reading the Kotlin and Swift app code as text: comments stripped, strings and
bracketed arguments skipped correctly, calls and constants found, so the contract checks
see what the code really uses."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT

APP_DIR = PROJECT_ROOT / "examples" / "app_integration"
KOTLIN = {"DevicetuneModel.kt", "ModelManifest.kt", "ModelUpdater.kt", "SignatureVerifier.kt",
          "FederationClient.kt", "FederationWorker.kt", "Json.kt", "Safetensors.kt",
          "SeenRerank.kt", "VersionDecryption.kt", "PersonalizationRecipe.kt", "Personalization.kt"}
SWIFT = {"DevicetuneModel.swift", "ModelManifest.swift", "ModelUpdater.swift",
         "SignatureVerifier.swift", "FederationClient.swift", "FederationTraining.swift",
         "SeenRerank.swift", "VersionDecryption.swift"}
# Files that talk to the device gateway, not the registry (federation_contract checks them).
GATEWAY_FILES = {"FederationClient.kt", "FederationClient.swift"}

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

