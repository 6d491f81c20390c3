# Half-open TCP flood: good-client /health latency (new TLS connection each) before and while
# N silent TCP connections are held open. Usage: halfopen.py N [address]
import socket, ssl, time, sys, statistics
addr=(sys.argv[2] if len(sys.argv) > 2 else "127.0.0.240", 443)
ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
def good(n):
    lat=[]
    for _ in range(n):
        t=time.time()
        s=ctx.wrap_socket(socket.create_connection(addr)); s.settimeout(30)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); d=s.recv(20); s.close()
        assert d.startswith(b"HTTP/1.1 200"), d
        lat.append((time.time()-t)*1000)
    lat.sort(); return statistics.median(lat), lat[int(len(lat)*0.99)-1] if len(lat)>=100 else lat[-1]
print("unloaded ms (median, max of 30):", good(30))
silent=[socket.create_connection(addr) for _ in range(int(sys.argv[1]))]
print(f"with {len(silent)} silent TCP connections ms (median, max of 30):", good(30))
for s in silent: s.close()
