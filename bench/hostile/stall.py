# Stalled uploads: N anonymous PUTs declaring 96 KB that send all but one byte, then stall.
# Prints the server RSS (pid) before, during and after, and how many got 408. Usage:
# stall.py PID N [address]
import socket, ssl, time, sys, os
addr=(sys.argv[3] if len(sys.argv) > 3 else "127.0.0.240", 443)
pid=int(sys.argv[1]); n=int(sys.argv[2])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])//1024
ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
print("rss before MB", rss())
conns=[]
body_decl=98304
for i in range(n):
    s=ctx.wrap_socket(socket.create_connection(addr))
    s.sendall(f"PUT /enrollments/x{i}?api-version=2021-10-01 HTTP/1.1\r\nHost: x\r\nContent-Length: {body_decl}\r\n\r\n".encode()+b"x"*(body_decl-1))
    conns.append(s)
time.sleep(2)
print(f"rss with {n} stalled uploads of 96 KB MB", rss())
# a 1 MiB declared body from an anonymous caller is refused at once
s=ctx.wrap_socket(socket.create_connection(addr)); s.sendall(b"PUT /enrollments/y?api-version=2021-10-01 HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
print("1 MiB anonymous:", s.recv(64).split(b"\r\n")[0])
t=time.time()
closed=0
for c in conns:
    c.settimeout(60)
    try:
        d=c.recv(64)
        closed+= d.startswith(b"HTTP/1.1 408")
    except Exception as e: pass
print(f"408 received on {closed}/{n} after {time.time()-t:.1f}s more")
for c in conns: c.close()
time.sleep(2)
print("rss after MB", rss())
