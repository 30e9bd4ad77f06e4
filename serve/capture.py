"""Opt-in capture of served texts (serve.capture.dir): the unlabeled target text that `make readapt` adapts to.

Each served text becomes one JSON line {"text": ...} in `capture-<date>-<time in ns>-<pid>.jsonl` under the
directory: every worker process writes its own files, a new one every serve.capture.file_mb, and the oldest go so
that all of them stay under serve.capture.max_mb (give or take the last request's texts). Lines are flushed as
they are written and files are only ever appended to, so a restart loses nothing answered before it. E-mail
addresses, phone numbers and runs of 6+ digits are masked (<email>, <phone>, <number>) unless serve.capture.mask
is false. A capture that fails (directory not writable, disk full) never fails the request: it is counted in
domainlift_capture_errors_total and logged once per failure spell.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path

log = logging.getLogger("serve.capture")
_MASKS = [  # order matters: an e-mail holds digits, a phone number is a digit run with separators
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"(?<!\w)\+?\d[\d\s().-]{7,}\d(?!\w)"), "<phone>"),
    (re.compile(r"\d{6,}"), "<number>"),
]


def mask(text: str) -> str:
    for pattern, token in _MASKS:
        text = pattern.sub(token, text)
    return text


def read_captured(directory: Path) -> list[str]:
    """Every captured text, oldest file first."""
    texts = []
    for f in sorted(Path(directory).glob("capture-*.jsonl")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a crash mid-write
    return texts


class Capture:
    def __init__(self, directory: str, max_mb: float, file_mb: float, masked: bool, on_error):
        self.dir = Path(directory)
        self.max_bytes, self.file_bytes = int(max_mb * 2**20), int(file_mb * 2**20)
        self.masked, self.on_error = masked, on_error
        self.lock = threading.Lock()
        self.file = None
        self.failing = False

    def add(self, texts: list[str]) -> bool:
        """Write the texts; False when the capture failed (counted and logged, never raised)."""
        lines = "".join(json.dumps({"text": mask(t) if self.masked else t}) + "\n" for t in texts)
        with self.lock:
            try:
                if self.file is None or self.file.tell() >= self.file_bytes:
                    self._rotate()
                self.file.write(lines)
                self.file.flush()
                self.failing = False
                return True
            except OSError as e:
                self.on_error()
                if not self.failing:  # one line per failure spell, not one per request
                    log.warning("capture to %s failed (%s); serving goes on without capturing", self.dir, e)
                self.failing = True
                self.file = None
                return False

    def _rotate(self) -> None:
        if self.file is not None:
            self.file.close()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"capture-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns():020d}-{os.getpid()}.jsonl"  # sorts by age
        self.file = open(self.dir / name, "a", encoding="utf-8")  # noqa: SIM115  (kept open across requests)
        # The older files may fill max_bytes less the room the new one will take, so the total stays under it.
        older = sorted((f for f in self.dir.glob("capture-*.jsonl") if f.name != name), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in older)
        for old in older:
            if total <= self.max_bytes - self.file_bytes:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
