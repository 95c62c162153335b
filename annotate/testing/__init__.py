"""Testing utilities, not used at runtime: servers and models that stand in for real ones.

    scripted_server.py  a real OpenAI-compatible HTTP server with scripted answers and injected
                        faults (`python -m annotate.testing.scripted_server` for benchmarks)
    guided.py           schema-shaped JSON from a small CPU causal LM, to put a real model behind
                        the scripted server

Both lean on the toy world (`train.toy`) for correct answers: an arrow against the flow
spans -> datastore -> annotate -> train that only tests and benchmarks take.
"""
