"""What the gateway engine (`workers.engines.gateway`) knows about the servers it drives.

`apis` maps a job to an upstream request and an upstream stream event to text, per API
(OpenAI chat, OpenAI completions, the legacy direct-SSE shape); `cli` holds the command-line
options of ``dualcall-worker gateway``.
"""
