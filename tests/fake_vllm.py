"""A stand-in for vLLM's OpenAI server, for tests that need a server's life cycle, not its model."""

# A stand-in for `python -m vllm.entrypoints.openai.api_server ...`: parses the same
# flags, forks a child into its process group (as vLLM spawns EngineCore), serves
# /health, /v1/models and a streaming /v1/completions with fixed delays.
FAKE_SERVER = r'''
import json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[sys.argv.index("-m") + 2:]
opt = lambda k: args[args.index(k) + 1]
port, name = int(opt("--port")), opt("--served-model-name")
FIRST, GAP = float(os.environ.get("FAKE_FIRST", "0.05")), float(os.environ.get("FAKE_GAP", "0.02"))
if os.environ.get("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["FAKE_PIDS"], "a" if os.environ.get("FAKE_PIDS_APPEND") else "w") as f:
    f.write(f"{os.getpid()} {child.pid}\n")
# FAKE_TOKENIZER: count prompt tokens with the checkpoint's tokenizer (a study's bench checks them)
tokenizer = None
if os.environ.get("FAKE_TOKENIZER"):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(opt("--model"))
time.sleep(float(os.environ.get("FAKE_BOOT", "0.3")))

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health": self._json({})
        elif self.path == "/v1/models": self._json({"data": [{"id": name}]})
        else: self.send_error(404)
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200); self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close"); self.end_headers()
        def send(obj):
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode()); self.wfile.flush()
        time.sleep(FIRST)
        for i in range(req["max_tokens"]):
            if i: time.sleep(GAP)
            send({"choices": [{"index": 0, "text": "x"}]})
        counted = len(tokenizer(req["prompt"])["input_ids"]) if tokenizer else len(req["prompt"].split())
        send({"choices": [], "usage": {"prompt_tokens": counted,
                                       "completion_tokens": req["max_tokens"]}})
        self.wfile.write(b"data: [DONE]\n\n"); self.wfile.flush()
        self.close_connection = True

ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''
