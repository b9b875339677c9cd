"""Rotation under load (issue 6): a writer appends numbered lines without
pause while rename+create, copytruncate, truncate and delete+recreate
happen at seeded random times; FileTailer.poll() runs in a loop on the
test's main thread, concurrently with the writer.

Every complete line written is seen exactly once, except lines a
truncation (plain or copytruncate) destroyed before any poll could read
them.  Those are counted, and each is checked to be one the tailer had no
chance to see: it belongs to a truncated stretch of the file and was
written after the start of the last poll that finished before the
truncation began.  birdsentinel must log a warning for every truncation
of a stretch it had read part of, and never more warnings than truncations.

Rotations are at least two polls apart (the tailer notices rotations when
it polls; inotify makes the daemon poll at each one).  As with logrotate's
"create", after a rename or an unlink the program often goes on writing to
the old file until it reopens its log - here until the tailer has already
moved to the new file - and those lines must be seen too.
"""
import collections
import json
import logging
import os
import random
import re
import shutil
import threading
import time

import birdsentinel as bs
from fakes import LogCapture

SEED = 4242
DURATION = 3.0
FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".figures")
LINE_RE = re.compile(r"^L(\d{7}) payload-(\d{7})-x{0,40}$")



def test_rotation_under_load_every_line_once(tmp_path):
    rng = random.Random(SEED)
    wrng = random.Random(SEED + 1)
    log = str(tmp_path / "app.log")
    open(log, "wb").close()

    cap = LogCapture()
    old_level, old_prop = bs.LOG.level, bs.LOG.propagate
    bs.LOG.setLevel(logging.INFO)
    bs.LOG.addHandler(cap)

    seen_text = []
    tailer = bs.FileTailer(log, seen_text.append, saved=None, start_at_end=False)

    mu = threading.Lock()
    shared = {"written": 0, "last_done_start": 0, "polls": 0, "stop": False, "late": 0}
    line_epoch = {}
    events = []               # (kind, details)
    errors = []

    def line(i):
        return b"L%07d payload-%07d-%s\n" % (i, i, b"x" * (i % 41))

    def writer():
        try:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            epoch = 0
            i = 0
            rot_n = 0
            polls_at_rotation = -10
            next_rotation = time.monotonic() + rng.uniform(0.02, 0.15)
            end = time.monotonic() + DURATION

            def put(target_fd, idx, split):
                data = line(idx)
                if split:
                    cut = wrng.randrange(1, len(data))
                    os.write(target_fd, data[:cut])
                    time.sleep(0)                     # let the poller see half a line
                    os.write(target_fd, data[cut:])
                else:
                    os.write(target_fd, data)

            old_fd = None              # the rotated file the program still writes to
            old_epoch = linger_until = 0
            while time.monotonic() < end:
                for _ in range(wrng.randrange(1, 8)):
                    target, ep = (old_fd, old_epoch) if old_fd is not None else (fd, epoch)
                    put(target, i, wrng.random() < 0.1)
                    with mu:
                        line_epoch[i] = ep
                        i += 1
                        shared["written"] = i
                        if old_fd is not None:
                            shared["late"] += 1
                now = time.monotonic()
                with mu:
                    polls = shared["polls"]
                if old_fd is not None and polls >= linger_until:
                    os.close(old_fd)                  # the program reopens its log at last
                    old_fd = None
                if now >= next_rotation and polls >= polls_at_rotation + 2 and old_fd is None:
                    kind = rng.choice(("rename", "copytruncate", "truncate", "delete"))
                    rot_n += 1
                    with mu:
                        safe = shared["last_done_start"]
                        lines_in_epoch = [k for k, e in line_epoch.items() if e == epoch]
                        polls_at_rotation = shared["polls"]
                    if kind in ("rename", "delete"):
                        if kind == "rename":
                            os.rename(log, "%s.%d" % (log, rot_n))
                        else:
                            os.unlink(log)
                        new_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                        if rng.random() < 0.5:
                            # logrotate's "create": the program goes on writing to the
                            # old file until it reopens its log, after the tailer has
                            # already moved to the new file
                            old_fd, old_epoch, linger_until = fd, epoch, polls_at_rotation + 2
                        else:
                            os.close(fd)
                        fd = new_fd
                        events.append((kind, {"epoch": epoch}))
                    else:
                        if kind == "copytruncate":
                            shutil.copyfile(log, "%s.%d" % (log, rot_n))
                        os.ftruncate(fd, 0)           # the writer keeps its O_APPEND descriptor
                        events.append((kind, {"epoch": epoch, "safe": safe,
                                              "nonempty": bool(lines_in_epoch),
                                              "read_part": any(k < safe for k in lines_in_epoch)}))
                    with mu:
                        epoch += 1
                    next_rotation = time.monotonic() + rng.uniform(0.02, 0.15)
                time.sleep(wrng.uniform(0.0005, 0.003))
            if old_fd is not None:
                os.close(old_fd)
            os.close(fd)
        except BaseException as exc:                 # reported by the main thread
            errors.append(repr(exc))
        finally:
            with mu:
                shared["stop"] = True

    wt = threading.Thread(target=writer, name="log-writer", daemon=True)
    prng = random.Random(SEED + 2)
    try:
        tailer.poll()                                # opens the empty file at offset 0
        wt.start()
        deadline = time.monotonic() + DURATION + 20
        while True:
            with mu:
                start = shared["written"]
                stop = shared["stop"]
            tailer.poll()
            with mu:
                shared["last_done_start"] = start
                shared["polls"] += 1
            if stop:
                break
            assert time.monotonic() < deadline, "the writer did not finish"
            time.sleep(prng.uniform(0.0, 0.004))
        wt.join(timeout=10)
        for _ in range(3):                           # everything the writer wrote is on disk now
            tailer.poll()
    finally:
        tailer.close()
        bs.LOG.removeHandler(cap)
        bs.LOG.setLevel(old_level)
        bs.LOG.propagate = old_prop

    assert not errors, errors
    total = shared["written"]
    seen = []
    bad = []
    for t in "".join(seen_text).split("\n")[:-1]:
        m = LINE_RE.match(t)
        if not m or m.group(1) != m.group(2) or len(t) != len(line(int(m.group(1)))) - 1:
            bad.append(t)
        else:
            seen.append(int(m.group(1)))
    counts = collections.Counter(seen)
    twice = sorted(k for k, c in counts.items() if c > 1)
    never_written = sorted(k for k in counts if k >= total)
    truncated = {e["epoch"]: e for kind, e in events if kind in ("copytruncate", "truncate")}
    missing = sorted(set(range(total)) - set(counts))
    unexplained = [k for k in missing
                   if line_epoch[k] not in truncated or k < truncated[line_epoch[k]]["safe"]]
    lost = len(missing) - len(unexplained)

    warn_msgs = [r.getMessage() for r in cap.records if r.levelno >= logging.WARNING]
    trunc_warnings = [m for m in warn_msgs if "shrank" in m or "truncated and rewritten" in m]
    n_trunc = sum(1 for kind, _ in events if kind in ("copytruncate", "truncate"))
    must_warn = sum(1 for kind, e in events if kind in ("copytruncate", "truncate") and e["read_part"])
    nonempty = sum(1 for kind, e in events if kind in ("copytruncate", "truncate") and e["nonempty"])
    kinds = collections.Counter(kind for kind, _ in events)
    figures = {"seed": SEED, "lines_written": total, "lines_seen": len(seen), "rotations": dict(kinds),
               "lost_to_truncation": lost, "truncation_warnings": len(trunc_warnings),
               "truncations": n_trunc, "polls": shared["polls"],
               "lines_written_to_rotated_files": shared["late"]}
    os.makedirs(FIGURES, exist_ok=True)
    with open(os.path.join(FIGURES, "rotation_load.json"), "w") as fh:
        json.dump(figures, fh, indent=2, sort_keys=True)
        fh.write("\n")
    print("rotation-under-load figures:", json.dumps(figures, sort_keys=True))

    assert total > 1000, "the writer wrote only %d lines" % total
    assert shared["late"] > 20, "too few lines went to rotated files: %d" % shared["late"]
    assert all(kinds[k] >= 2 for k in ("rename", "copytruncate", "truncate", "delete")), kinds
    assert not bad, "lines that were never written (torn or spliced): %r" % bad[:5]
    assert not twice, "lines seen twice: %s" % twice[:10]
    assert not never_written
    assert not unexplained, (
        "%d line(s) lost that no truncation destroyed before a poll could read them, first %s "
        "(epochs %s); events %s" % (len(unexplained), unexplained[:10],
                                    sorted({line_epoch[k] for k in unexplained})[:10], events[:40]))
    assert must_warn <= len(trunc_warnings) <= nonempty, (must_warn, len(trunc_warnings), nonempty,
                                                          trunc_warnings)
    if lost:
        assert trunc_warnings
