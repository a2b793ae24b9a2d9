"""``python -m mlmodels.predict_once ARTIFACT``: one prediction, in a process of its own.

The agent runs this for a prediction task (``mlmodels.agentside``), so the artifact (a pickle:
code) is loaded here, under the limits of a workload, and never in the agent. It reads
``{"input_data": ...}`` on stdin *before* loading anything (the agent confines the process
first, then writes), and writes one JSON object to stdout: ``{"prediction": ...}``, or
``{"error": ..., "error_status": 400|413|422}``, or ``{"error": ..., "stage": "load"}`` when the
artifact does not load. Whatever the model itself prints goes to stderr. No Django here.
"""

import json
import os
import sys

from mlmodels import inference


def main(argv: list[str]) -> int:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the model's own prints go to stderr and cannot forge the answer's line
    request = json.load(sys.stdin)
    try:
        model = inference.load_file(argv[1])
    except Exception as error:  # whatever unpickling raised: the task says so
        reply = {"error": f"{type(error).__name__}: {error}", "stage": "load"}
    else:
        try:
            reply = {"prediction": inference.predict(model, request["input_data"])}
        except (inference.BadInput, inference.BatchTooLarge, inference.ModelFailed) as error:
            reply = {"error": str(error), "error_status": error.status}
    json.dump(reply, answer)
    answer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
