"""Fetch http://127.0.0.1:8080/index.html and write the body to stdout.

Usage: localhost_fetch.py ATTEMPTS
Tries ATTEMPTS times, 0.2 s apart (the server may still be starting); exits with an error
message when nothing answered.
"""
import sys
import time
import urllib.request

for _attempt in range(int(sys.argv[1])):
    try:
        body = urllib.request.urlopen('http://127.0.0.1:8080/index.html', timeout=2).read()
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit('nothing answered on 127.0.0.1:8080')
sys.stdout.write(body.decode())
