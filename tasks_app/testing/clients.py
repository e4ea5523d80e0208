"""A user's client of one task, as a separate process, for fault tests.

Run as ``python -c WATCHING_CLIENT wait|follow TASK_ID OUT_FILE POLLING``:
``wait`` prints the task's final status; ``follow`` copies its stdout into
OUT_FILE as it arrives. Both must carry on through whatever the test breaks.
"""

WATCHING_CLIENT = """\
import sys, simdeck
task = simdeck.tasks.Task(sys.argv[2])
polling = float(sys.argv[4])
if sys.argv[1] == "wait":
    print(task.wait(polling_period=polling, silent_mode=True), flush=True)
else:
    with open(sys.argv[3], "w") as out:
        for stream, text in task.stream_logs(("stdout",), polling_period=polling):
            out.write(text)
            out.flush()
"""
