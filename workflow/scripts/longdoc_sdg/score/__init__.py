"""MMLongBench-Doc scoring: the benchmark's rules in two modes, per row and in aggregate.

`official` reproduces the benchmark's published evaluation (its `eval_score.py`), quirks
included; where that code would crash on a row (and stop the whole run), the row is recorded as
an error with the reason and left out of the aggregates. `fixed` repairs the known defects and is
what the `verify` stage scores with. Rows are always scored by the ground truth's
`answer_format`. The rules (`../shared/docs/mmlongbench-doc.md`, "Scoring, exactly"):

- cleaning (Float, Str, None, List): lower case, trimmed, parenthesised parts removed, one
  leading and one trailing quote dropped, leading `$` and trailing `%` stripped;
- Int: `int(gt) == int(float(pred))`; Float: within 1% of gt, gt/100 or gt×100, or equal after
  rounding; Str/None: equality for "exact-match" ground truths (URLs, code files, "page...",
  numbers and phone-like numbers, times, dates, e-mails), else ANLS with the 0.5 cut-off;
  List: equal lengths, items cleaned and sorted, equality of the "-"-joined lists when the first
  gt item is a number or exact-match string, else the minimum pairwise ANLS.

Differences of `fixed` from `official`:

| case                                    | official                              | fixed                               |
|-----------------------------------------|---------------------------------------|-------------------------------------|
| list text that is not a Python literal  | `eval`: crash (error row) or code run | JSON, then literal, else split at commas; never evaluated |
| list text with leading spaces           | not parsed: a one-item list           | parsed                              |
| both lists empty                        | crash (error row)                     | 1.0                                 |
| list items of mixed kinds               | first sorted gt item decides for all  | each item: exact if number/exact-match string, else ANLS |
| "-"-joined list comparison              | ["a-b", "c"] equals ["a", "b-c"]      | item by item                        |
| Int "1,234" / "$1,234"                  | 0 (int(float()) fails)                | 1234                                |
| Int "10.7" for gt 10                    | 1.0 (truncated)                       | 0.0 (must equal)                    |
| Int with empty gt ""                    | 1.0 whatever the prediction           | scored as Str                       |
| Int/Float gt that is not a number       | Int 0.0; Float crash (error row)      | scored as Str                       |
| Float "1,234.5"                         | 0 (float() fails)                     | 1234.5                              |
| gt "Not answerable"                     | ANLS ("answerable" scores 0.71)       | 1 only for a real "Not answerable" (case, quotes, spaces, final full stop aside) |
| pred "Not answerable" for answerable gt | ANLS against gt (may be > 0)          | 0                                   |
| ANLS length                             | of the upper-cased strings            | of the strings                      |

Both modes share the aggregates (`results.aggregate`): accuracy = mean score; F1 from recall
over rows whose answer is not "Not answerable" and precision over rows whose pred is not exactly
"Not answerable"; splits single_page (exactly one evidence page, unanswerable rows included),
cross_page (not one page and answerable), unanswerable; one group per evidence source (a row
counts in each of its sources) and per doc_type. An empty group has accuracy 0.0 and n 0, as in
the benchmark's output.
"""

from .results import (
    RESULT_FIELDS,
    SAMPLE_FIELDS,
    InputError,
    aggregate,
    check_rows,
    read_rows,
    rows_path,
    score_file,
    score_rows,
    write_outputs,
)
from .rules import FORMATS, MODES, NOT_ANSWERABLE, ScoringError, clean, is_not_answerable, parse_list, score_answer

__all__ = [
    "FORMATS",
    "MODES",
    "NOT_ANSWERABLE",
    "RESULT_FIELDS",
    "SAMPLE_FIELDS",
    "InputError",
    "ScoringError",
    "aggregate",
    "check_rows",
    "clean",
    "is_not_answerable",
    "parse_list",
    "read_rows",
    "rows_path",
    "score_answer",
    "score_file",
    "score_rows",
    "write_outputs",
]
