"""docs/reliability.md's figures from an `ibis stress` report: the block between two markers is rewritten,
the page's own text (what is checked, what was found and fixed) stays as written."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BEGIN", "END", "read_results", "render", "write_figures"]

BEGIN = "<!-- ibis stress: figures begin -->"
END = "<!-- ibis stress: figures end -->"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
              for row in rows]
    return lines + [""]


def _failed(section: dict) -> list[str]:
    return [f"Section not run: {section['error']}", ""] if "error" in section else []


def _protocol(section: dict) -> list[str]:
    rows = [[p["name"], p["examples"], "holds" if p["failure"] is None else f"FAILS: {p['failure']}"]
            for p in section.get("properties", [])]
    return _failed(section) + [f"Hypothesis, seed {section.get('seed')}:", ""] + _table(
        ["property", "inputs", "result"], rows)


def _dicom(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    steps = section["steps"]
    outcome_rows = []
    for step in ("read_image", "read_series", "read_volume", "write_seg", "read_back", "dciodvfy", "case"):
        counts = [steps.get(f"{step} {o}", 0) for o in ("result", "refusal", "failure")]
        if any(counts):
            outcome_rows.append([step, *counts])
    lines = [f"{section['cases']} mutated inputs from {section['seeds']} seeds (the real series "
             f"{', '.join(section['seed_folders'])} of ../shared/data/dicom, each also one file alone, and pydicom's "
             f"test files), seed {section['seed']}; {section['inputs']} reader and writer calls; slowest case "
             f"{section['slowest_seconds']} s against a bound of {section['time_bound_seconds']:g} s; "
             f"{section['seconds']:.0f} s in all.", ""]
    lines += _table(["step", "result", "one-line refusal", "failure"], outcome_rows)
    lines += ["Mutations drawn (a case has one or two): " + ", ".join(f"{k} {v}" for k, v in
                                                                     section["mutations"].items()) + ".", ""]
    if section["failures"]:
        lines += _table(["case", "seed", "mutations", "step", "failure"],
                        [[f["index"], f["seed"], ", ".join(f["mutations"]), f["step"], f["detail"]]
                         for f in section["failures"][:30]])
    else:
        lines += ["No failure: every input ended in a result or a one-line refusal.", ""]
    return lines


def _latency_table(section: dict) -> list[str]:
    """Percentiles per request kind of a load section."""
    rows = [[kind, v.get("n", 0), v.get("p50"), v.get("p90"), v.get("p99"), v.get("max")]
            for kind, v in section["latency_ms"].items()]
    return _table(["request", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)


def _problems(section: dict) -> list[str]:
    """The first ten errors and mismatches of a load section, as a list."""
    problems = (section["errors"] + section["mismatches"])[:10]
    return [f"- {problem}" for problem in problems] + ([""] if problems else [])


def _load(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    rss = section["server_rss_mb"]
    lines = [f"{section['sessions']} sessions at once for {section['seconds']} s over {section['images']} real "
             f"images (the oracle agent, up to 5 clicks a run; each session its own gRPC client): "
             f"{section['runs']} runs, {section['requests'].get('encode', 0)} encode and "
             f"{section['requests'].get('decode', 0)} decode requests; {len(section['errors'])} lost or failed, "
             f"{len(section['mismatches'])} runs unlike their solo run.", ""]
    lines += _latency_table(section)
    lines += [f"Triton's memory (server and stubs): {rss.get('before')} MB before, {rss.get('after_solo_runs')} MB "
              f"after the solo runs had filled its cache, {rss.get('max')} MB at most during the load "
              f"({section['rss_samples']} samples), {rss.get('end')} MB at the end; it still held "
              f"{section['resident_after']} of the {section['images']} images' embeddings (it keeps "
              f"{section['resident_capacity']}).", ""]
    return lines + _problems(section)


def _label_load(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    rss = section["server_rss_mb"]
    lines = [f"{section['sessions']} annotators at once for {section['seconds']} s over {section['studies']} real "
             f"images on one MONAI Label server (each its own client_id; per image the agent's pass from the text "
             f"prompt in a fresh session, then one point of the person's): {section['runs']} prompt + point pairs; "
             f"{len(section['errors'])} lost, failed or re-encoded on a point, {len(section['mismatches'])} unlike "
             f"their solo run.", ""]
    lines += _latency_table(section)
    lines += [f"The server's memory (MONAI Label, the agent's worker, their children): {rss.get('before')} MB before, "
              f"{rss.get('after_solo_runs')} MB after the solo runs, {rss.get('max')} MB at most during the load "
              f"({section['rss_samples']} samples), {rss.get('end')} MB at the end.", ""]
    return lines + _problems(section)


def _signals(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    rows = [[f"ibis {t['command']}", t["signal"], t["moment"], t["parent_exit"], t["parent_seconds"] and
             round(t["parent_seconds"], 1), t["server_seconds"] and round(t["server_seconds"], 1),
             "yes" if t["parent_seconds"] is not None and t["server_seconds"] is not None and not t["leftover"]
             else f"NO: {t['leftover']}"] for t in section["trials"]]
    lines = _table(["command", "signal", "while", "exit", "ibis gone (s)", "server group gone (s)", "nothing left"],
                   rows)
    if section.get("label_skipped"):
        lines += [f"Not run: {section['label_skipped']}.", ""]
    return lines


def _kills(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    rows = []
    for kind in ("run", "seg", "checkpoint"):
        trials = [t for t in section["trials"] if t["kind"] == kind]
        if not trials:
            continue
        survived = sum(not t["problems"] for t in trials)
        newer = sum(t["found"] == t["completed"] + 1 for t in trials)
        debris = sum(bool(t["debris"]) for t in trials)
        rows.append([kind, len(trials), survived, newer, debris,
                     "; ".join(sorted({p for t in trials for p in t["problems"]}))[:200] or "none"])
    return _table(["output", "kills", "one complete output left", "of which the one being written",
                   "hidden temporaries left", "problems"], rows)


def _training(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    epochs, iterations = section["expected"]
    return [f"IBIS-lite trained by configs/train_lite.yaml (small settings: {epochs} imitation epochs, {iterations} "
            f"GRPO iterations), SIGKILLed after its checkpoint of {section['killed_after']}, then run with resume: "
            f"exit {section['resumed_exit']}; its record holds epochs {list(section['epochs'])} and iterations "
            f"{list(section['iterations'])}: {'each once, none lost' if section['survived'] else 'NOT as asked'}.",
            ""]


def _disk(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    rows = [[t["what"], t["exit_status"] if t["exit_status"] is not None else "-", t["message"],
             ", ".join(t["left"]) or "nothing", "yes" if t["earlier_intact"] else "NO"] for t in section["trials"]]
    return _table(["writer", "exit", "its one line", "left on the disk", "earlier output intact"], rows)


def _sessions(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    rows = [[t["fault"], t["during"], t["seconds"], t["after"], "yes" if t["survived"] else "NO"]
            for t in section["trials"]]
    return [f"On {section['image']}:", ""] + _table(["fault", "the session saw", "in (s)", "next run", "as it should"],
                                                  rows)


def _security(section: dict) -> list[str]:
    if "error" in section:
        return _failed(section)
    lines = _table(["server", "listening on", "beyond loopback", f"reachable from {section['binds'][0]['reachable_from']}"],
                   [[b["server"], ", ".join(b["listening"]), ", ".join(b["beyond_loopback"]) or "none",
                     "yes" if b["reachable"] else "no"] for b in section["binds"]])
    lines += _table(["request beyond a bound", "answer", "refused"],
                    [[b["request"], b["answer"], "yes" if b["refused"] else "NO"] for b in section["bounds"]])
    canary = section["canary"]
    lines += [f"Canary patient (name, ID, birth date, accession, other IDs, address) in the real dcmqi CT series, "
              f"then {' and '.join(canary['commands'])} with logging at DEBUG: {canary['files_scanned']} outputs, "
              f"logs and console streams scanned ({canary['log_records']} log lines), "
              f"{len(canary['leaks'])} leaks{': ' + '; '.join(canary['leaks']) if canary['leaks'] else ''}; "
              f"the SEG itself carries the patient, as it must: {'yes' if canary['seg_keeps_patient'] else 'NO'}.", ""]
    return lines


_SECTIONS = [("protocol", "Fuzzing: the action language, queries and prompt files", _protocol),
             ("dicom", "Fuzzing: DICOM mutations", _dicom),
             ("load", "Load: concurrent sessions against Triton", _load),
             ("label_load", "Load: concurrent annotators on MONAI Label", _label_load),
             ("signals", "Faults: servers stopped by signals", _signals),
             ("kills", "Faults: SIGKILL while an output is written", _kills),
             ("training", "Faults: training killed, then resumed", _training),
             ("disk", "Faults: a full disk (256 KiB tmpfs)", _disk),
             ("sessions", "Faults: the server restarts or freezes while a session is open", _sessions),
             ("security", "Security: binding, request bounds, patient data", _security)]


def _made_by(entry: dict) -> list[str]:
    start, end = entry["machine_at_start"], entry["machine_at_end"]
    return [f"Made by `{entry['command']}` on {entry['started']} (commit {start['commit']}, {start['cpus']} CPU "
            f"cores shared with other work: load average {start['load_average'][0]} at the start, "
            f"{end['load_average'][0]} at the end), {entry['seconds'] / 60:.1f} min.", ""]


def render(entries: dict[str, dict]) -> str:
    """The figures block from section results (name -> what `run.run_stress` wrote), in the page's order."""
    lines = [BEGIN, ""]
    for key, title, render_section in _SECTIONS:
        if key in entries:
            lines += [f"### {title}", ""] + _made_by(entries[key]) + render_section(entries[key]["result"])
    missing = [key for key, _, _ in _SECTIONS if key not in entries]
    if missing:
        lines += [f"Not measured yet: {', '.join(missing)}.", ""]
    return "\n".join(lines + [END])


def read_results(results: Path) -> dict[str, dict]:
    """The section results found in `results` (NAME.json each)."""
    import json

    return {key: json.loads((results / f"{key}.json").read_text()) for key, _, _ in _SECTIONS
            if (results / f"{key}.json").is_file()}


def write_figures(path: Path, results: Path) -> None:
    """Replace the figures block of `path` (appended when the page has none) with what `results` holds."""
    from ..outputs import write_text_atomic

    text = path.read_text() if path.is_file() else "# Reliability and security, in figures\n\n"
    block = render(read_results(results))
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(path, text)
