"""Serving: score requests over HTTP with the multi-item engine (runnable without Ray).

``schemas`` (the bounded request/response models), ``prompts`` (a request as a prompt, by
the offline promptify code), ``registry`` (which model version to serve, and its run),
``service`` (engine + prompter of one replica), ``api`` (the FastAPI app). The Ray Serve
deployments that wrap them are ``pipelines/serve_app.py``; docs/serving.md.
"""
