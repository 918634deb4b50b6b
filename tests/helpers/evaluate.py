"""The evaluate tests' fixture: the benchmark-layout samples (tests/data/evaluate/samples.json)
and a scripted TEST DOUBLE of the OpenAI server answering them."""

from __future__ import annotations

from conftest import REPO
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

SAMPLES = REPO / "tests" / "data" / "evaluate" / "samples.json"
# The model's (extracted) answer per question, in fixture order; hand scores official / fixed.
PREDS = [
    "Torsten Hothorn",  # 1 / 1
    "3",  # 1 / 1
    "0.828",  # within 1%: 1 / 1
    "80",  # not 8.06, /100 or x100: 0 / 0
    "vcd package",  # ANLS 1 - 8/11 <= 0.5: 0 / 0
    "Vienna",  # wien -> vienna: 3 edits of 6, 0.5 is not above the cut-off: 0 / 0
    "Not answerable",  # 1 / 1
    "The zoo Development Team",  # 4 insertions of 24: 5/6 / 5/6
    "[irregular time series, ordered observations]",  # official: eval fails (error); fixed: split, 1
    "answerable",  # official ANLS 10/14; fixed 0
]


class ScriptedModel(FakeOpenAIServer):
    """TEST DOUBLE: a free reply per question, then the extractor's two lines."""

    def __init__(self, questions: list[str], **kwargs):
        super().__init__(**kwargs)
        self.questions = questions
        self.images_per_question: dict[str, int] = {}
        self.prompts: list[str] = []

    def _completion(self, req, key, fault):
        payload = super()._completion(req, key, fault)
        content = req["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        text = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")
        self.prompts.append(text)
        for question, pred in zip(self.questions, PREDS):
            if question in text:
                if "Extracted answer:" in text:
                    reply = f"Extracted answer: {pred}\nAnswer format: String"
                else:
                    self.images_per_question[question] = sum(p.get("type") == "image_url" for p in parts)
                    reply = f"Looking at the pages, I would say {pred}."
                payload["choices"][0]["message"]["content"] = reply
        return payload
