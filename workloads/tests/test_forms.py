"""The console's submit form turns typed text into the API's payload; the API's errors go back on fields."""

import pytest

from workloads.forms import WorkloadSubmitForm, flatten_errors, size_value


@pytest.mark.parametrize(("text", "expected"), [
    ("42", 42), ("512Mi", 512 * 1024**2), ("2Gi", 2 * 1024**3), ("500M", 500 * 1000**2), ("1.5Gi", 1610612736),
    ("1GiB", 1024**3), ("lots", "lots"), ("-1", "-1"),
])
def test_sizes_are_read_in_bytes_and_anything_else_passes_through(text, expected):
    assert size_value(text) == expected


def test_nested_api_errors_flatten_to_paths():
    errors = {"config": {"command": ["This field is required."]}, "requirements": {"cpu": ["bad"]},
              "name": ["may not be blank"], "detail": "ignored"}
    assert sorted(flatten_errors(errors)) == [
        ("config.command", "This field is required."), ("name", "may not be blank"), ("requirements.cpu", "bad")]


def test_a_command_line_becomes_command_and_args_never_a_shell_string():
    form = WorkloadSubmitForm({"name": "t", "type": "process", "command_line": "sh -c 'echo a b'",
                               "env": "A=1\nB=x=y", "memory": "64Mi", "cpu": "0.5"})
    assert form.is_valid()
    assert form.to_payload() == {
        "name": "t", "type": "process",
        "config": {"command": "sh", "args": ["-c", "echo a b"], "env": {"A": "1", "B": "x=y"}},
        "requirements": {"cpu": 0.5, "memory": 64 * 1024**2},
    }


def test_unreadable_input_is_reported_on_its_field():
    form = WorkloadSubmitForm({"name": "t", "type": "process", "command_line": "sh -c 'open", "env": "NOEQUALS"})
    assert form.is_valid()
    assert form.to_payload() is None
    assert "command_line" in form.errors and "env" in form.errors
