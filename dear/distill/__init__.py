"""On-policy distillation around the objective, no Lightning: sampling (rollout.py), the teacher's view of the
student's tokens (teacher_view.py), who writes the responses (sources.py), one training step (step.py) and pages of
what a method selects (selection_pages.py)."""
