"""Serve a local web page to try a trained DeepLabV3 on a photo or a webcam snapshot.

    .venv/bin/python demo_app.py --restore-from runs/stage1
    # then open the URL it prints, e.g. http://127.0.0.1:7860/

Drop a photo (or take one with the webcam): the page shows it tinted with the classes found and
their legend, the colour mask, the classes present with their share of the pixels, and offers
the class map to download as the palette PNG predict.py writes for the same file. Every
inference flag of predict.py applies (--scales, --flip, --precision, --eval-crop-size,
--dataset for a published checkpoint, ...). The page is Gradio's, with its analytics off, no
share link and nothing fetched from the internet. It listens on --host 127.0.0.1 (this machine
only); another address needs --allow-remote, as the page has no login. Ctrl-C or SIGTERM stops it.
"""
import ipaddress
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading

import config as config_lib
from libs.utils import filesystem
from libs.utils.frozen_weights import assume_frozen_weights
from libs.utils.processes import alive

_WORK_DIR_RE = re.compile(r'^demo_app-(\d+)-')


def parse_args(argv=None):
    """The flags, checked before TensorFlow and Gradio start; `--port 0` becomes a free port."""
    p = config_lib.script_parser(__doc__)
    config_lib.add_inference_args(p)
    p.add_argument('--host', default='127.0.0.1',
                   help='address to listen on; other than this machine needs --allow-remote')
    p.add_argument('--port', type=config_lib.non_negative_int, default=7860,
                   help='port to listen on; 0: any free port')
    p.add_argument('--allow-remote', action='store_true',
                   help='allow a --host that other machines reach (the page has no login)')
    args = p.parse_args(argv)
    config_lib.check_inference_args(p, args)
    if not (os.path.isdir(args.restore_from) or os.path.isfile(args.restore_from + '.index')):
        p.error(f'--restore-from {args.restore_from}: no such run folder or checkpoint prefix '
                f'({args.restore_from}.index is missing)')
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(args.host, None)}
    except socket.gaierror as e:
        p.error(f'--host {args.host}: cannot resolve it ({e.strerror})')
    remote = sorted(a for a in addresses
                    if not ipaddress.ip_address(a.split('%')[0]).is_loopback)
    if remote and not args.allow_remote:
        p.error(f'--host {args.host} is reachable from other machines ({", ".join(remote)}) and '
                'the page has no login; pass --allow-remote to serve it there anyway')
    try:
        args.port = _bind_probe(args.host, args.port)
    except OSError as e:
        p.error(f'--port {args.port}: cannot listen on {args.host}:{args.port} ({e.strerror}); '
                'choose another port, or 0 for any free one')
    return args


def _bind_probe(host, port):
    """Binds `host:port` and lets it go; returns the port (for port 0, the one the system chose).

    Raises:
        OSError: the port is in use, or not ours to take.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As uvicorn binds: a port whose last connections are in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return s.getsockname()[1]


def _work_dir():
    """A new folder for the page's class-map PNGs in the system's temporary folder, named by this
    process's pid, after removing those of earlier pages that were killed before they could."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        match = _WORK_DIR_RE.match(name)
        if match and not alive(int(match.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f'demo_app-{os.getpid()}-')


@filesystem.one_line_errors
def main(argv=None):
    args = parse_args(argv)
    # Ctrl-C or SIGTERM, during loading as while serving: close the server, remove the files.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Before Gradio is imported: no usage reports, no version check, no Hugging Face Hub calls.
    os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'
    assume_frozen_weights()  # before TensorFlow starts: this process only infers
    from libs.evaluation import app, prediction
    from libs.evaluation.inference import InferenceOptions
    options = InferenceOptions.from_args(args)
    try:
        predictor, run_config, prefix, step = prediction.trained_predictor(
            args.restore_from, options, args.output_stride, config_lib.reference_hints(args))
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    description = (f'Checkpoint `{prefix}` (step {step}), output stride '
                   f'{run_config.output_stride}, {options.describe()}. Drop a photo or take one '
                   'with the webcam.')
    if stop.is_set():
        print('Stopped.', file=sys.stderr)
        return 0
    with _work_dir() as work_dir:
        demo = app.build_demo(predictor, prediction.class_names_of(run_config),
                              prediction.class_colors_of(run_config), work_dir,
                              title=f'DeepLabV3: {os.path.basename(os.path.normpath(prefix))}',
                              description=description)
        try:
            _, url, _ = demo.launch(server_name=args.host, server_port=args.port, share=False,
                                    prevent_thread_lock=True, quiet=True, show_error=True,
                                    allowed_paths=[work_dir], ssr_mode=False, mcp_server=False)
        except OSError as e:
            # The port was free when the flags were checked and was taken since.
            print(f'error: --port {args.port}: {e}', file=sys.stderr)
            return 1
        print(f'Serving at {url} (Ctrl-C stops it)', flush=True)
        stop.wait()
        demo.close()
    print('Stopped.', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
