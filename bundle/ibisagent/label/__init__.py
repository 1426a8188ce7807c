"""The MONAI Label app (`ibis label-serve`): the agent's text-driven pass and the person's clicks in one session.

Nothing is imported here: `app` runs inside the MONAI Label process (its own
environment), `task` and `worker` in the agent's.
"""
