// The chat hub from Go, with code from stock protoc-gen-go and protoc-gen-go-grpc
// (Debian's packages), against a real chat-server: login, hello, join, say, whisper,
// error codes, heartbeats answered, a client ping, a clean close.
// Run with: examples/go/run.sh  (it generates the code into a temp GOPATH first)
package hubtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	chat "hubtest/gen/chatv1"
	hub "hubtest/gen/hubv1"
)

// Every wait is bounded by this: it asserts no speed, the machine is shared.
const wait = 15 * time.Second

// chatServer starts target/debug/chat-server on a free port and stops it when the test ends.
func chatServer(t *testing.T, args ...string) string {
	t.Helper()
	bin := filepath.Join(os.Getenv("HUB_ROOT"), "target", "debug", "chat-server")
	cmd := exec.Command(bin, append([]string{"--addr", "127.0.0.1:0", "--groups", "memory"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("chat-server's log:\n%s", logs.String())
		}
	})
	addr := make(chan string, 1)
	go func() {
		listening := regexp.MustCompile(`chat-server listening on (\S+)`)
		lines := bufio.NewScanner(stdout)
		for lines.Scan() {
			if m := listening.FindStringSubmatch(lines.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("chat-server did not say where it listens")
		return ""
	}
}

// push is one push frame: its sequence number and its `event` case.
type push struct {
	seq   uint64
	event interface{}
}

// client is a minimal hub client: call ids matched to replies, pushes on a channel,
// server pings answered with pongs.
type client struct {
	conn    *grpc.ClientConn
	stream  chat.ChatHub_ConnectClient
	info    *hub.ConnectionInfo
	pushes  chan push
	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *chat.ChatResponse
	pongs   chan uint64
	pinged  chan struct{}
	ended   chan error // the stream's end: io.EOF (clean) or the status error
	sendMu  sync.Mutex
}

// login logs in as user (chat.v1.ChatLogin/Login on conn) and returns a context
// whose metadata carries the token for Connect: `authorization: Bearer <token>`.
func login(t *testing.T, ctx context.Context, conn *grpc.ClientConn, user string) context.Context {
	t.Helper()
	callCtx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	reply, err := chat.NewChatLoginClient(conn).Login(callCtx, &chat.LoginRequest{User: user})
	if err != nil {
		t.Fatalf("login as %s: %v", user, err)
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+reply.GetToken())
}

func connect(t *testing.T, addr, user string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	stream, err := chat.NewChatHubClient(conn).Connect(login(t, context.Background(), conn, user))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("hello: %v", err)
	}
	c := &client{conn: conn, stream: stream, info: first.GetControl().GetHello(),
		pushes: make(chan push, 100), pending: map[uint64]chan *chat.ChatResponse{},
		pongs: make(chan uint64, 10), pinged: make(chan struct{}, 100), ended: make(chan error, 1)}
	if c.info == nil {
		t.Fatalf("the first frame is not a hello: %v", first)
	}
	go c.read()
	t.Cleanup(func() { c.close() })
	return c
}

func (c *client) send(req *chat.ChatRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(req)
}

func (c *client) read() {
	for {
		frame, err := c.stream.Recv()
		if err != nil {
			c.ended <- err
			return
		}
		switch {
		case frame.GetControl().GetPing() != nil:
			nonce := frame.GetControl().GetPing().GetNonce()
			_ = c.send(&chat.ChatRequest{Control: &hub.ClientControl{
				Kind: &hub.ClientControl_Pong{Pong: &hub.Pong{Nonce: nonce}}}})
			c.pinged <- struct{}{}
		case frame.GetControl().GetPong() != nil:
			c.pongs <- frame.GetControl().GetPong().GetNonce()
		case frame.GetControl() != nil && frame.GetControl().GetPosition() == nil:
		case frame.GetId() != 0:
			c.mu.Lock()
			waiter := c.pending[frame.GetId()]
			delete(c.pending, frame.GetId())
			c.mu.Unlock()
			if waiter != nil {
				waiter <- frame
			}
		case frame.GetEvent() != nil:
			c.pushes <- push{seq: frame.GetSeq(), event: frame.GetEvent()}
		}
	}
}

// call sends `call` with a fresh id and waits for the frame with that id.
func (c *client) call(t *testing.T, call interface{}) *chat.ChatResponse {
	t.Helper()
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	reply := make(chan *chat.ChatResponse, 1)
	c.pending[id] = reply
	c.mu.Unlock()
	req := &chat.ChatRequest{Id: id}
	switch v := call.(type) {
	case *chat.JoinRequest:
		req.Call = &chat.ChatRequest_Join{Join: v}
	case *chat.SayRequest:
		req.Call = &chat.ChatRequest_Say{Say: v}
	case *chat.WhisperRequest:
		req.Call = &chat.ChatRequest_Whisper{Whisper: v}
	case string:
		if v != "members" {
			t.Fatalf("no such call %q", v)
		}
		req.Call = &chat.ChatRequest_Members{Members: &emptypb.Empty{}}
	}
	if err := c.send(req); err != nil {
		t.Fatalf("send: %v", err)
	}
	select {
	case r := <-reply:
		return r
	case <-time.After(wait):
		t.Fatalf("no reply to call %d within %v", id, wait)
		return nil
	}
}

func (c *client) nextPush(t *testing.T) push {
	t.Helper()
	select {
	case p := <-c.pushes:
		return p
	case <-time.After(wait):
		t.Fatalf("no push within %v", wait)
		return push{}
	}
}

func (c *client) close() error {
	c.sendMu.Lock()
	_ = c.stream.CloseSend()
	c.sendMu.Unlock()
	select {
	case err := <-c.ended:
		c.ended <- err
		c.conn.Close()
		return err
	case <-time.After(wait):
		c.conn.Close()
		return fmt.Errorf("the server did not end the stream within %v", wait)
	}
}

func unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

func TestHelloJoinSayWhisper(t *testing.T) {
	addr := chatServer(t, "--heartbeat-interval", "7", "--heartbeat-timeout", "21")
	alice, bob := connect(t, addr, "alice"), connect(t, addr, "bob")
	if alice.info.Hub != "chat.v1.ChatHub" || alice.info.HeartbeatIntervalMs != 7000 ||
		alice.info.HeartbeatTimeoutMs != 21000 || alice.info.ConnectionId == bob.info.ConnectionId {
		t.Fatalf("hello: %v / %v", alice.info, bob.info)
	}
	room := unique("room")

	// A call before join fails with FAILED_PRECONDITION, under the call's id.
	r := alice.call(t, &chat.SayRequest{Text: "too early"})
	if r.GetError().GetCode() != int32(codes.FailedPrecondition) || r.GetId() == 0 {
		t.Fatalf("say before join: %v", r)
	}

	if m := alice.call(t, &chat.JoinRequest{Room: room}).GetJoin(); m.GetCount() != 1 {
		t.Fatalf("alice joined: %v", m)
	}
	if m := bob.call(t, &chat.JoinRequest{Room: room}).GetJoin(); fmt.Sprint(m.GetMembers()) != "[alice bob]" {
		t.Fatalf("bob joined: %v", m)
	}
	p := alice.nextPush(t)
	if e, ok := p.event.(*chat.ChatResponse_OnJoin); !ok || e.OnJoin.GetUser() != "bob" || p.seq != 1 {
		t.Fatalf("alice's first push: %+v", p)
	}
	if r := bob.call(t, &chat.SayRequest{Text: "hi from go"}); r.GetError() != nil {
		t.Fatalf("say: %v", r)
	}
	p = alice.nextPush(t)
	if e, ok := p.event.(*chat.ChatResponse_OnMessage); !ok || e.OnMessage.GetFrom() != "bob" ||
		e.OnMessage.GetText() != "hi from go" || p.seq != 2 {
		t.Fatalf("alice's second push: %+v", p)
	}
	r = alice.call(t, &chat.WhisperRequest{User: "nobody", Text: "?"})
	if r.GetError().GetCode() != int32(codes.NotFound) {
		t.Fatalf("whisper to nobody: %v", r)
	}
	if m := alice.call(t, "members").GetMembers(); m.GetCount() != 2 {
		t.Fatalf("members: %v", m)
	}
	// A clean close: the stream ends with OK (io.EOF), and the room hears about it.
	if err := bob.close(); err != io.EOF {
		t.Fatalf("bob's close: %v", err)
	}
	p = alice.nextPush(t)
	if e, ok := p.event.(*chat.ChatResponse_OnLeave); !ok || e.OnLeave.GetUser() != "bob" {
		t.Fatalf("alice's third push: %+v", p)
	}
}

func TestHeartbeatsAndPings(t *testing.T) {
	addr := chatServer(t, "--heartbeat-interval", "1", "--heartbeat-timeout", "3")
	c := connect(t, addr, "patient")
	c.call(t, &chat.JoinRequest{Room: unique("room")})
	// Answered pings keep the connection open past the timeout.
	for i := 0; i < 4; i++ {
		select {
		case <-c.pinged:
		case <-time.After(wait):
			t.Fatalf("ping %d did not come within %v", i+1, wait)
		}
	}
	if m := c.call(t, "members").GetMembers(); fmt.Sprint(m.GetMembers()) != "[patient]" {
		t.Fatalf("members after 4 pings: %v", m)
	}
	// A client ping gets a pong with its nonce.
	if err := c.send(&chat.ChatRequest{Control: &hub.ClientControl{
		Kind: &hub.ClientControl_Ping{Ping: &hub.Ping{Nonce: 42}}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-c.pongs:
		if n != 42 {
			t.Fatalf("pong nonce %d", n)
		}
	case <-time.After(wait):
		t.Fatal("no pong")
	}
}

func TestSilentClientIsClosedWithUnavailable(t *testing.T) {
	addr := chatServer(t, "--heartbeat-interval", "1", "--heartbeat-timeout", "2")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := chat.NewChatHubClient(conn).Connect(login(t, ctx, conn, "silent"))
	if err != nil {
		t.Fatal(err)
	}
	var goodbye *hub.Goodbye
	for {
		frame, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable || goodbye == nil || goodbye.GetCode() != int32(codes.Unavailable) {
				t.Fatalf("ended with %v after goodbye %v", err, goodbye)
			}
			return
		}
		if g := frame.GetControl().GetGoodbye(); g != nil {
			goodbye = g
		}
	}
}
