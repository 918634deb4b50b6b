"""A fake-server deployment with replicas for the serving tests (no tests here)."""

from __future__ import annotations

from longdoc_sdg.serve import Deployment

# The fake OpenAI-compatible server (a test double) started the way a deployment starts vLLM.
FAKE = "{python} -m longdoc_sdg.testing.fake_openai_server --model {model}"


def fake_replicas(name="pool", extra_args=(), **fields) -> Deployment:
    settings = {
        "name": name,
        "model": "fake/never-loaded",
        "served_model_name": f"{name}-served",
        "serve_command": FAKE,
        "extra_args": list(extra_args),
        "ready_timeout_s": 60,
        "idle_timeout_s": None,
        "stop_grace_s": 2,
        "replicas": 2,
    }
    settings.update(fields)
    return Deployment.model_validate(settings)
