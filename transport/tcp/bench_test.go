package tcp

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// benchEnvelopes returns n envelopes of the benchmark's shape: a UUID-sized id, a topic, a
// 256-byte payload and, if headers, two headers.
func benchEnvelopes(n int, headers bool) []transport.Envelope {
	envs := make([]transport.Envelope, n)
	now := time.Now()
	for i := range envs {
		envs[i] = transport.Envelope{
			ID:          fmt.Sprintf("0190a3c4-5e6f-7a8b-9c0d-%012d", i),
			Topic:       "order.placed",
			Payload:     make([]byte, 256),
			CreatedAt:   now,
			SendAttempt: 1,
		}
		if headers {
			envs[i].Headers = map[string]string{"content-type": "application/json", "trace-id": "4bf92f3577b34da6a3ce929d0e0e4736"}
		}
	}
	return envs
}

// BenchmarkSend measures Client.Send through a real Server on 127.0.0.1 (no TLS), with 16
// goroutines sending so that batches are pipelined. One op is one batch. Reported: envelopes/s
// and allocations per envelope, counting client and server together.
func BenchmarkSend(b *testing.B) {
	for _, size := range []int{1, 100} {
		for _, headers := range []bool{false, true} {
			name := fmt.Sprintf("batch=%d", size)
			if headers {
				name += "/headers=2"
			}
			b.Run(name, func(b *testing.B) { benchSend(b, size, headers) })
		}
	}
}

func benchSend(b *testing.B, size int, headers bool) {
	srv := startServer(b, acceptAll(), ServerConfig{MaxInFlight: 64})
	c := newClient(b, srv.addr, ClientConfig{MaxInFlight: 32})
	batch := &transport.Batch{Envelopes: benchEnvelopes(size, headers)}
	ctx := context.Background()
	if _, err := c.Send(ctx, batch); err != nil {
		b.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := cpuTime()
	b.SetParallelism(8)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Send(ctx, batch); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	envs := float64(b.N * size)
	b.ReportMetric(envs/elapsed.Seconds(), "envelopes/s")
	// CPU time of the whole process (client and server) per envelope: unlike envelopes/s it
	// hardly depends on what else runs on the machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/envs, "cpu-ns/envelope")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/envs, "allocs/envelope")
	b.ReportMetric(0, "ns/op") // per-batch time is not the figure of interest here
}

// cpuTime returns the user plus system CPU time consumed by this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEcho is the baseline: plain length-prefixed frames of 256 bytes (and of one
// 100-envelope batch's size) echoed over a TCP connection on 127.0.0.1, written and read
// through bufio by one writer and one reader, with no protocol, no allocation and no
// acknowledgement matching.
func BenchmarkEcho(b *testing.B) {
	for _, size := range []int{256, 100 * 330} {
		b.Run(fmt.Sprintf("frame=%dB", size), func(b *testing.B) { benchEcho(b, size) })
	}
}

func benchEcho(b *testing.B, size int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReaderSize(c, 64<<10)
		bw := bufio.NewWriterSize(c, 64<<10)
		buf := make([]byte, 4+size)
		for {
			if _, err := io.ReadFull(br, buf[:4]); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(buf)
			if _, err := io.ReadFull(br, buf[4:4+n]); err != nil {
				return
			}
			bw.Write(buf[:4+n])
			if br.Buffered() == 0 {
				if bw.Flush() != nil {
					return
				}
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	frame := make([]byte, 4+size)
	binary.BigEndian.PutUint32(frame, uint32(size))
	done := make(chan error, 1)
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	go func() {
		br := bufio.NewReaderSize(c, 64<<10)
		buf := make([]byte, 4+size)
		for i := 0; i < b.N; i++ {
			if _, err := io.ReadFull(br, buf); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	bw := bufio.NewWriterSize(c, 64<<10)
	for i := 0; i < b.N; i++ {
		bw.Write(frame)
	}
	bw.Flush()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	c.Close()
	<-served
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/frame")
}

// BenchmarkDecodeBatch measures the server's decoding of one 100-envelope BATCH body.
func BenchmarkDecodeBatch(b *testing.B) {
	for _, headers := range []bool{false, true} {
		b.Run(fmt.Sprintf("headers=%v", headers), func(b *testing.B) {
			frame, err := appendBatch(nil, 1, benchEnvelopes(100, headers), DefaultMaxFrameSize)
			if err != nil {
				b.Fatal(err)
			}
			body := frame[frameHeaderLen:]
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			for b.Loop() {
				if _, _, err := decodeBatch(body); err != nil {
					b.Fatal(err)
				}
			}
			runtime.ReadMemStats(&m1)
			b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(b.N*100), "allocs/envelope")
		})
	}
}

// BenchmarkEncodeBatch measures the client's encoding of one 100-envelope batch.
func BenchmarkEncodeBatch(b *testing.B) {
	envs := benchEnvelopes(100, false)
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = appendBatch(buf[:0], 1, envs, DefaultMaxFrameSize); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}
