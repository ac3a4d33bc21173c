"""Summarise py-spy raw (collapsed) stacks: where the server's samples go.

    python bench/profile_summary.py /tmp/prof/fan-out-chatroom.txt [--top 25] [--match send]

Prints the functions with the most samples on top of the stack (self), the most samples
anywhere in the stack (inclusive), and, with --match, inclusive shares of the frames whose
text contains each given string.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module.py)`: lines merged per function."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match["file"]
    for marker in ("site-packages/", "/app/", "/bench/", "python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file})"


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [short(frame) for frame in stack.split(";")]
        # the first frame is the thread ("process 123:\"python\"" or thread name): drop it
        stacks.append(
            (
                frames[1:] if frames and frames[0].startswith(("process", "thread")) else frames,
                int(count),
            )
        )
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", action="append", default=[])
    args = parser.parse_args()
    stacks = load(args.profile)
    total = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{args.profile.name}: {total} samples")
    print("\nself:")
    for frame, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("\ninclusive:")
    for frame, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    for needle in args.match:
        hits = sum(c for frames, c in stacks if any(needle in f for f in frames))
        print(f"\nmatch {needle!r}: {100 * hits / total:.1f}% inclusive")


if __name__ == "__main__":
    main()
