"""A "browser" for the OIDC tests ($BROWSER="python fake_browser.py %s"): GET the URL
and follow redirects, which with the test provider's auto-consent ends at the ssh3
client's 127.0.0.1 redirect listener. The CA comes from $SSL_CERT_FILE (OpenSSL's
default verify paths honour it)."""

import ssl
import sys
import urllib.request

opener = urllib.request.build_opener(
    urllib.request.HTTPSHandler(context=ssl.create_default_context()))
with opener.open(sys.argv[1], timeout=30) as response:
    response.read()
