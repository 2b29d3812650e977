"""YAML 1.2 booleans: only `true` and `false`. YAML 1.1 (PyYAML's default) reads `on`, `off`,
`yes` and `no` as booleans too, so the webhook key `on:` as the README writes it failed to load."""

from __future__ import annotations

from pathlib import Path

from splitproxy.config.models import load
from splitproxy.config.steps import WebhookEvent

CONFIG = """\
routes:
  - name: shop
    versions:
      stable: {endpoints: ["http://127.0.0.1:9001"]}
      canary: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {stable: 9, canary: 1}
    analysis: {include_synthetic: %s}
    rollout:
      steps: [{set_weight: 10}]
      webhooks:
        - {on: pre-step, url: "http://127.0.0.1:7000/gate", timeout: 5s}
        - on: abort
          url: http://127.0.0.1:7000/notify
"""


def test_the_webhook_key_on_is_a_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG % "true")
    rollout = load(path).routes[0].rollout
    assert rollout is not None
    assert [(w.on, w.url) for w in rollout.webhooks] == [
        ((WebhookEvent.PRE_STEP,), "http://127.0.0.1:7000/gate"),
        ((WebhookEvent.ABORT,), "http://127.0.0.1:7000/notify")]


def test_a_boolean_field_still_takes_yes_and_off(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for text, value in (("true", True), ("False", False), ("yes", True), ("off", False)):
        path.write_text(CONFIG % text)
        analysis = load(path).routes[0].analysis
        assert analysis is not None and analysis.include_synthetic is value, text


def test_version_names_on_and_off_are_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""\
routes:
  - name: shop
    versions:
      on: {endpoints: ["http://127.0.0.1:9001"]}
      off: {endpoints: ["http://127.0.0.1:9002"]}
    weights: {on: 1, off: 1}
""")
    assert list(load(path).routes[0].versions) == ["on", "off"]
