"""`make npu-check`: one command that checks an Ascend machine end to end and writes a report to attach to
a bug report. board/npu_check.py is the script; each other module is one step or one part of the report."""
