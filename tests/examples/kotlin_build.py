"""Compiling the app's plain-JVM Kotlin with Debian's ``kotlinc`` (installed by
``make kotlin``), once per set of sources: the jar is kept under pytest's temporary
root, named by the sources' sha256, so a rerun with unchanged sources does not compile."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import PROJECT_ROOT

ANDROID_DIR = PROJECT_ROOT / "examples" / "app_integration" / "android"
# The Android-free Kotlin: no android.*, androidx.*, org.json or LiteRT import. The other
# files of ANDROID_DIR need the Android SDK and are checked by contract only.
PLAIN_JVM = ("Json.kt", "Safetensors.kt", "FederationClient.kt", "SeenRerank.kt",
             "VersionDecryption.kt", "PersonalizationRecipe.kt")
CHECK = PROJECT_ROOT / "tests" / "examples" / "kotlin" / "Check.kt"
MAIN_CLASS = "devicetune.check.CheckKt"


def sources() -> list[Path]:
    return [ANDROID_DIR / name for name in PLAIN_JVM] + [CHECK]


def compile_jar(cache: Path) -> tuple[Path, float]:
    """The jar of `sources` (with the Kotlin runtime), and the seconds compiling took
    (0 when it was cached)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources())).hexdigest()[:16]
    jar = cache / f"app-{digest}.jar"
    if jar.exists():
        return jar, 0.0
    kotlinc = shutil.which("kotlinc")
    assert kotlinc is not None, "kotlinc is missing: run `make kotlin` (Debian's kotlin package)"
    cache.mkdir(parents=True, exist_ok=True)
    partial = jar.with_suffix(f".{os.getpid()}.partial.jar")  # two runs never share one
    started = time.monotonic()
    done = subprocess.run([kotlinc, *map(str, sources()), "-include-runtime", "-d",
                           str(partial)], capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    os.replace(partial, jar)
    return jar, seconds


def java_command(jar: Path, *args: str) -> list[str]:
    java = shutil.which("java")
    assert java is not None, "java is missing: run `make kotlin` (it brings OpenJDK)"
    return [java, "-cp", str(jar), MAIN_CLASS, *args]
