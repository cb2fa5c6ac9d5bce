"""``k2trt demo`` end to end, as the README runs it: checkpoint -> convert -> engine -> repository -> tritonserver
-> a chat and a tools request over tritonclient (gRPC streaming) -> stop. About 20 s on 2 cores."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from k2trt.demo import TRAINED

pytestmark = pytest.mark.slow

STAGES = ["checkpoint", "inspect", "convert (tp 2, ep 2)", "build (torch engine)", "repo", "serve (tritonserver)",
          "chat request (gRPC streaming)", "tools request (gRPC streaming)", "stop server"]


def test_demo_from_the_cli(tmp_path):
    from k2trt.cli import app

    r = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    out = r.output
    for stage in STAGES:  # each stage ran and reported its time
        assert re.search(rf"^{re.escape(stage)}: \d+\.\d\d s$", out, re.M), stage
    assert re.search(r"^total +\d+\.\d\d s$", out, re.M)
    # both requests streamed and finished
    assert len(re.findall(r"\d+ streamed responses; finish_reason (stop|length|tool_calls)", out)) >= 2
    assert (tmp_path / "demo" / "triton_repo" / "k2trt_repo.json").is_file()
    if (TRAINED / "config.json").is_file():
        # the trained model does the model card's example right through the whole stack: it calls the tool for
        # Beijing, gets {"weather": "Sunny"} back, and answers with it
        assert re.search(r'tool call functions\.get_weather:0: get_weather\(\{"city": "Beijing"\}\)', out), out
        assert 'tool result functions.get_weather:0: {"weather": "Sunny"}' in out
        assert re.search(r"finish_reason tool_calls(.|\n)*Sunny(.|\n)*finish_reason stop", out), out
    else:
        assert "no tool call" in out
