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
    form = WorkloadSubmitForm({"name": "t", "type": "process", "command_line": "sh -c 'open", "env": "NOEQUALS",
                               "extra_config": "[1]"})
    assert not form.is_valid()
    assert form.errors["command_line"] == ["cannot split this command line: No closing quotation"]
    assert form.errors["env"] == ["line 1: expected KEY=value"]
    assert form.errors["extra_config"] == ["must be a JSON object"]


def test_each_kind_turns_its_own_inputs_into_its_config():
    container = WorkloadSubmitForm({"name": "c", "type": "container", "image": "busybox", "ports": "8080:80, 9000",
                                    "command_line": "sh -c 'echo hi'", "model_path": "ignored.joblib"})
    assert container.is_valid()
    assert container.to_payload()["config"] == {"image": "busybox", "command": ["sh", "-c", "echo hi"],
                                                 "ports": ["8080:80", 9000]}
    model = WorkloadSubmitForm({"name": "m", "type": "mlmodel", "model_path": "m.joblib", "port": "9000",
                                "extra_config": '{"model_type": "sklearn"}', "image": "ignored"})
    assert model.is_valid()
    assert model.to_payload()["config"] == {"model_path": "m.joblib", "port": 9000, "model_type": "sklearn"}


def test_the_type_switch_and_run_inputs_come_from_the_registry_each_saying_who_shows_it():
    form = WorkloadSubmitForm()
    assert list(form.fields["type"].choices) == [("process", "Process"), ("container", "Container"),
                                                 ("mlmodel", "ML model")]
    assert form.fields["type"].initial == "process"
    assert form.run_fields["command_line"] == ["process", "container", "mlmodel"]
    assert form.run_fields["image"] == ["container"] and form.run_fields["model_path"] == ["mlmodel"]
    # Each kind's inputs appear in the order it lists them.
    shown = [name for name, kinds in form.run_fields.items() if "container" in kinds]
    assert shown == ["image", "command_line", "ports", "env", "working_dir"]


def test_api_errors_land_on_the_inputs_that_fed_them():
    form = WorkloadSubmitForm({"name": "c", "type": "container"})
    assert form.is_valid()
    form.add_api_errors({"config": {"image": ["This field is required."], "args": ["bad"],
                                    "volumes": [{"source": ["not allowed"]}]},
                         "requirements": {"cpu": ["too many"]}, "status": ["already stopped"]})
    assert form.errors["image"] == ["This field is required."]
    assert form.errors["command_line"] == ["bad"]
    assert form.errors["extra_config"] == ["not allowed"]
    assert form.errors["cpu"] == ["too many"]
    assert form.non_field_errors() == ["status: already stopped"]
