// The preview app of the real node's tests: a static binary, run as a non-root user.
//
//	app [serve]     listen on :$PORT (default 8080); GET / answers 200 with the values of
//	                PREVIEWD_SERVICE and PREVIEWD_SHA and the user id it runs as
//	app fetch URL   print the body of a GET of URL and exit 0, or print the error and exit 1;
//	                gives up after 4 s, so it always ends within 5 s
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 0 || args[0] == "serve":
		os.Exit(serve())
	case args[0] == "fetch" && len(args) == 2:
		os.Exit(fetch(args[1]))
	default:
		fmt.Fprintln(os.Stderr, "usage: app [serve] | app fetch URL")
		os.Exit(2)
	}
}

func serve() int {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	body := fmt.Sprintf("previewd test app\nservice=%s\nsha=%s\nuid=%d\n",
		os.Getenv("PREVIEWD_SERVICE"), os.Getenv("PREVIEWD_SHA"), os.Getuid())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, body)
	})
	server := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		server.Shutdown(shutdown)
	}()
	fmt.Fprintf(os.Stderr, "serving on :%s as uid %d\n", port, os.Getuid())
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func fetch(url string) int {
	client := &http.Client{Timeout: 4 * time.Second}
	response, err := client.Get(url)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	os.Stdout.Write(body)
	if response.StatusCode < 200 || response.StatusCode > 299 {
		fmt.Printf("HTTP %s\n", response.Status)
		return 1
	}
	return 0
}
