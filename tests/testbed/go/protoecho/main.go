// Command protoecho is a tiny test-bed backend and client used to prove that
// an ingress controller (Traefik) forwards gRPC over h2c and WebSockets end
// to end. It is built as a static binary (CGO_ENABLED=0) so it can run in an
// otherwise empty root filesystem: it never uses TLS, so no /etc/ssl is needed.
//
//	protoecho serve --http-port P [--page TEXT]
//	protoecho grpc-check ADDR AUTHORITY [SERVICE]
//	protoecho ws-echo URL HOST MESSAGE
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// clientTimeout bounds every client subcommand so a broken route fails the
// test bed quickly instead of hanging it.
const clientTimeout = 5 * time.Second

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = serve(args)
	case "grpc-check":
		err = grpcCheck(args)
	case "ws-echo":
		err = wsEcho(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "protoecho:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  protoecho serve --http-port P [--page TEXT]
  protoecho grpc-check ADDR AUTHORITY [SERVICE]
  protoecho ws-echo URL HOST MESSAGE
`)
	os.Exit(2)
}

// serve runs gRPC, WebSocket and plain HTTP on ONE cleartext port, because
// the point of the test bed is that the proxy must pick the right protocol
// for a single backend port (h2c for gRPC, Upgrade for WebSocket).
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	port := fs.Int("http-port", 0, "TCP port to listen on (0.0.0.0)")
	page := fs.String("page", "protoecho", "text for the HTTP page, WebSocket prefix and extra gRPC health service name")
	fs.Parse(args)
	if *port <= 0 || *port > 65535 || fs.NArg() != 0 {
		return errors.New("serve: need --http-port 1..65535 and no positional arguments")
	}

	// Standard health service: "" is SERVING by default; also register the
	// page text so a check can prove it reached *this* backend, not another.
	grpcSrv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus(*page, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(grpcSrv, hs)

	// websocket.Server with no Handshake accepts any (or no) Origin: the test
	// bed connects through a proxy under arbitrary host names, and
	// websocket.Handler would reject requests lacking an Origin header.
	ws := websocket.Server{Handler: func(c *websocket.Conn) {
		defer c.Close()
		for {
			var msg string
			if err := websocket.Message.Receive(c, &msg); err != nil {
				return // peer closed or sent garbage; nothing to report
			}
			if err := websocket.Message.Send(c, *page+": "+msg); err != nil {
				return
			}
		}
	}}

	mux := http.NewServeMux()
	mux.Handle("/ws", ws)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, *page)
	})

	// Dispatch gRPC by protocol + content-type (the documented condition for
	// grpc.Server.ServeHTTP); everything else goes to the mux, whether it
	// arrived as HTTP/1.1 or as h2c.
	root := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcSrv.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})

	// Cleartext HTTP/1.1 and prior-knowledge HTTP/2 (h2c) on the same port.
	// Prior knowledge is what gRPC clients and Traefik's h2c:// backends
	// send. net/http does this natively since Go 1.24; x/net/http2/h2c is
	// deprecated in favour of it (it additionally did "Upgrade: h2c",
	// which neither gRPC nor Traefik uses).
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Addr:              net.JoinHostPort("0.0.0.0", strconv.Itoa(*port)),
		Handler:           root,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
	}

	// Handle SIGTERM/SIGINT explicitly: as PID 1 in a container the kernel
	// drops signals that have no handler, so `docker stop` would otherwise
	// wait for its kill timeout.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	fmt.Fprintf(os.Stderr, "protoecho: serving http/h2c/grpc/ws on %s (page %q)\n", srv.Addr, *page)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Hijacked WebSocket and h2c connections are not tracked by Shutdown,
	// so bound it and then just exit.
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	grpcSrv.Stop()
	_ = srv.Shutdown(sctx)
	return nil
}

// grpcCheck calls grpc.health.v1.Health/Check through ADDR while presenting
// AUTHORITY as :authority, which is what a host-routing proxy matches on.
func grpcCheck(args []string) error {
	if len(args) < 2 || len(args) > 3 {
		usage()
	}
	addr, authority, service := args[0], args[1], ""
	if len(args) == 3 {
		service = args[2]
	}
	// passthrough: hand ADDR to the Go dialer as-is (honours /etc/hosts and
	// container DNS) instead of gRPC's own DNS resolver.
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority))
	if err != nil {
		return fmt.Errorf("grpc-check: %w", err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return fmt.Errorf("grpc-check %s (authority %s, service %q): %w", addr, authority, service, err)
	}
	fmt.Println(resp.GetStatus())
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		os.Exit(1)
	}
	return nil
}

// wsEcho opens a WebSocket to URL but sends Host: HOST, so the proxy routes
// by HOST while the TCP connection goes to URL's address.
func wsEcho(args []string) error {
	if len(args) != 3 {
		usage()
	}
	rawURL, host, message := args[0], args[1], args[2]
	target, err := url.Parse(rawURL)
	if err != nil || target.Scheme != "ws" || target.Host == "" {
		return fmt.Errorf("ws-echo: want a ws://host:port/path URL, got %q", rawURL)
	}
	dialAddr := target.Host
	if target.Port() == "" {
		dialAddr = net.JoinHostPort(target.Hostname(), "80")
	}

	// x/net/websocket derives the Host header from Location, so dial the
	// real address ourselves and put HOST into Location.
	loc := *target
	loc.Host = host
	cfg, err := websocket.NewConfig(loc.String(), "http://"+host)
	if err != nil {
		return fmt.Errorf("ws-echo: %w", err)
	}

	deadline := time.Now().Add(clientTimeout)
	tcp, err := net.DialTimeout("tcp", dialAddr, clientTimeout)
	if err != nil {
		return fmt.Errorf("ws-echo: %w", err)
	}
	defer tcp.Close()
	// One deadline covers the handshake, the send and the reply.
	if err := tcp.SetDeadline(deadline); err != nil {
		return fmt.Errorf("ws-echo: %w", err)
	}
	ws, err := websocket.NewClient(cfg, tcp)
	if err != nil {
		return fmt.Errorf("ws-echo: handshake with %s (Host %s): %w", dialAddr, host, err)
	}
	defer ws.Close()

	if err := websocket.Message.Send(ws, message); err != nil {
		return fmt.Errorf("ws-echo: send: %w", err)
	}
	var reply string
	if err := websocket.Message.Receive(ws, &reply); err != nil {
		return fmt.Errorf("ws-echo: receive: %w", err)
	}
	fmt.Println(reply)
	return nil
}
