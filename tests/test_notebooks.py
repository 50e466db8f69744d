"""The committed notebooks: thin, parameterized, without outputs, one per stage."""

import nbformat
import pytest

from cmoscal.report import notebook_for
from cmoscal.stages import STAGES


@pytest.mark.parametrize("stage", list(STAGES))
def test_notebook_is_committed_clean_and_parameterized(stage):
    book = nbformat.read(notebook_for(stage), as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "params_file" in tagged[0].source and "root" in tagged[0].source
    assert book.cells[0].cell_type == "markdown" and len(book.cells[0].source) > 200
    assert book.metadata["kernelspec"]["name"] == "cmoscal"
    assert f"{stage}.run(params" in "".join(c.source for c in code)
