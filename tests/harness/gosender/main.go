// gosender posts Falco alerts as Falcosidekick's webhook output does: Go's net/http client, JSON bodies,
// keep-alive connections shared by a few workers, an optional custom header. It prints one JSON line: the
// count of each answer status, the transport errors and how many connections carried the requests.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "the engine's intake URL")
	n := flag.Int("n", 100, "alerts to post")
	workers := flag.Int("workers", 4, "concurrent senders, each reusing its connection")
	header := flag.String("header", "", "a custom header to send (Falcosidekick's customheaders)")
	value := flag.String("value", "", "its value")
	flag.Parse()

	// at most one connection per worker: a connection the server closed is the only reason to dial again
	transport := &http.Transport{MaxIdleConnsPerHost: *workers, MaxConnsPerHost: *workers}
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	var mu sync.Mutex
	statuses := map[int]int{}
	conns := map[string]bool{}
	errs := 0
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				body := fmt.Sprintf(`{"output":"08:21:07.114583261: Notice A shell was spawned n=%d","priority":"Notice",`+
					`"rule":"Terminal shell in container","time":"2026-07-14T08:21:07.114583261Z","source":"syscall",`+
					`"output_fields":{"k8s.ns.name":"payments","k8s.pod.name":"gosender-%d","proc.name":"bash"},`+
					`"tags":["container","shell"],"hostname":"node-1"}`, i, i)
				req, _ := http.NewRequest(http.MethodPost, *url, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json; charset=utf-8")
				req.Header.Set("User-Agent", "Falcosidekick")
				if *header != "" {
					req.Header.Set(*header, *value)
				}
				trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
					mu.Lock()
					conns[info.Conn.LocalAddr().String()] = true
					mu.Unlock()
				}}
				resp, err := client.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
				mu.Lock()
				if err != nil {
					errs++
				} else {
					statuses[resp.StatusCode]++
				}
				mu.Unlock()
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	for i := 0; i < *n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(map[string]any{"statuses": statuses, "errors": errs, "connections": len(conns)})
}
