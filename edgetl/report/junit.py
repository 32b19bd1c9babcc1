"""junit.xml of `edgetl build`: one <testcase> per target and gate, so a CI system (GitLab,
Jenkins, GitHub test reporters) lists which device missed which gate.

    <testsuites name="edgetl build" tests= failures= skipped=>
      <testsuite name="edgetl build: rpi5" tests= failures= skipped=>
        <testcase classname="edgetl.build.rpi5" name="max_drop_pts" time="0">
          <failure message="target 'rpi5' failed gate max_drop_pts: ..." type="gate">...</failure>
        </testcase>

Built with xml.etree, which escapes text and attributes, so a label or path with markup
characters cannot break the file.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from edgetl.core.fsutil import atomic_write_bytes


def junit_tree(summary: dict) -> ET.ElementTree:
    """The JUnit XML document of a build summary."""
    root = ET.Element("testsuites", name="edgetl build")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for name, t in summary["targets"].items():
        suite = ET.SubElement(root, "testsuite", name=f"edgetl build: {name}")
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        props = ET.SubElement(suite, "properties")
        for key in ("candidate", "precision", "format", "bundle_sha256", "latency_source"):
            if t.get(key) is not None:
                ET.SubElement(props, "property", name=key, value=str(t[key]))
        for g in t["gates"]:
            case = ET.SubElement(suite, "testcase", classname=f"edgetl.build.{name}", name=g["name"], time="0")
            counts["tests"] += 1
            detail = json.dumps({k: g.get(k) for k in ("value", "limit", "source")}, ensure_ascii=False)
            if g.get("skipped"):
                ET.SubElement(case, "skipped", message=g["message"])
                counts["skipped"] += 1
            elif not g["passed"]:
                failure = ET.SubElement(case, "failure", message=g["message"], type="gate")
                failure.text = f"{g['message']}\n{detail}"
                counts["failures"] += 1
            else:
                ET.SubElement(case, "system-out").text = g["message"]
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("errors", "0")
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("errors", "0")
    root.set("time", str(summary.get("seconds", 0)))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(summary: dict, path: Path) -> Path:
    """Write junit.xml (UTF-8, with the XML declaration), crash-safely."""
    tree = junit_tree(summary)
    data = ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True)
    atomic_write_bytes(path, data + b"\n")
    return Path(path)
