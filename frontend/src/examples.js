// Built-in examples for the Examples menu. Each is a complete, gofmt-clean program.

export const EXAMPLES = [
  {
    id: "hello",
    title: "Hello, World",
    source: `package main

import "fmt"

func main() {
	fmt.Println("Hello, 世界")
}
`,
  },
  {
    id: "goroutines",
    title: "Goroutines and channels",
    source: `package main

import (
	"fmt"
	"sync"
)

// worker squares the numbers it receives and sends the results back.
func worker(id int, jobs <-chan int, results chan<- string) {
	for n := range jobs {
		results <- fmt.Sprintf("worker %d: %d² = %d", id, n, n*n)
	}
}

func main() {
	jobs := make(chan int)
	results := make(chan string)

	var wg sync.WaitGroup
	for id := 1; id <= 3; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			worker(id, jobs, results)
		}()
	}

	go func() {
		for n := 1; n <= 9; n++ {
			jobs <- n
		}
		close(jobs)
	}()

	go func() {
		wg.Wait()
		close(results)
	}()

	for r := range results {
		fmt.Println(r)
	}
}
`,
  },
  {
    id: "closures",
    title: "Closures",
    source: `package main

import "fmt"

// counter returns a function that remembers how often it was called.
func counter() func() int {
	n := 0
	return func() int {
		n++
		return n
	}
}

// fib returns a generator of Fibonacci numbers.
func fib() func() int {
	a, b := 0, 1
	return func() int {
		r := a
		a, b = b, a+b
		return r
	}
}

func main() {
	next := counter()
	fmt.Println(next(), next(), next())

	other := counter()
	fmt.Println(other()) // a fresh counter starts again at 1

	f := fib()
	for i := 0; i < 10; i++ {
		fmt.Print(f(), " ")
	}
	fmt.Println()
}
`,
  },
  {
    id: "generics",
    title: "Generics",
    source: `package main

import (
	"cmp"
	"fmt"
)

// Map applies f to every element of s.
func Map[T, U any](s []T, f func(T) U) []U {
	out := make([]U, 0, len(s))
	for _, v := range s {
		out = append(out, f(v))
	}
	return out
}

// Max returns the largest element of a non-empty slice.
func Max[T cmp.Ordered](s []T) T {
	m := s[0]
	for _, v := range s[1:] {
		m = max(m, v)
	}
	return m
}

// Stack is a generic last-in, first-out stack.
type Stack[T any] struct{ items []T }

func (s *Stack[T]) Push(v T) { s.items = append(s.items, v) }

func (s *Stack[T]) Pop() (T, bool) {
	var zero T
	if len(s.items) == 0 {
		return zero, false
	}
	v := s.items[len(s.items)-1]
	s.items = s.items[:len(s.items)-1]
	return v, true
}

func main() {
	words := []string{"go", "generics", "are", "neat"}
	fmt.Println(Map(words, func(s string) int { return len(s) }))
	fmt.Println(Max([]int{3, 9, 4}), Max(words))

	var st Stack[string]
	for _, w := range words {
		st.Push(w)
	}
	for {
		w, ok := st.Pop()
		if !ok {
			break
		}
		fmt.Print(w, " ")
	}
	fmt.Println()
}
`,
  },
  {
    id: "errors",
    title: "Errors",
    source: `package main

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrNegative is a sentinel error callers can test for with errors.Is.
var ErrNegative = errors.New("negative number")

// ParseError carries the input that failed; callers can get it with errors.As.
type ParseError struct {
	Input string
	Err   error
}

func (e *ParseError) Error() string { return fmt.Sprintf("parse %q: %v", e.Input, e.Err) }
func (e *ParseError) Unwrap() error { return e.Err }

func parseAge(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, &ParseError{Input: s, Err: err}
	}
	if n < 0 {
		return 0, fmt.Errorf("age %d: %w", n, ErrNegative)
	}
	return n, nil
}

func main() {
	for _, in := range []string{"42", "-1", "forty"} {
		age, err := parseAge(in)
		var pe *ParseError
		switch {
		case err == nil:
			fmt.Println("age:", age)
		case errors.Is(err, ErrNegative):
			fmt.Println("rejected:", err)
		case errors.As(err, &pe):
			fmt.Println("bad input", pe.Input, "->", pe.Err)
		}
	}
}
`,
  },
  {
    id: "test",
    title: "Table-driven test",
    source: `package main

import (
	"strings"
	"testing"
)

// Reverse returns s with its runes in reverse order.
func Reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

func TestReverse(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"ascii", "gopher", "rehpog"},
		{"unicode", "Hello, 世界", "界世 ,olleH"},
		{"palindrome", "racecar", "racecar"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Reverse(tc.in); got != tc.want {
				t.Errorf("Reverse(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestReverseTwiceIsIdentity(t *testing.T) {
	for _, s := range strings.Fields("a bc déf ghij") {
		if got := Reverse(Reverse(s)); got != s {
			t.Errorf("Reverse(Reverse(%q)) = %q", s, got)
		}
	}
}
`,
  },
  {
    id: "multifile",
    title: "Multiple files (go.mod)",
    source: `-- go.mod --
module example.com/hello

go 1.22
-- main.go --
package main

import (
	"fmt"

	"example.com/hello/greet"
)

func main() {
	fmt.Println(greet.Hello("gopher"))
}
-- greet/greet.go --
package greet

import "fmt"

// Hello returns a greeting for name.
func Hello(name string) string {
	return fmt.Sprintf("Hello, %s! (from package greet)", name)
}
`,
  },
  {
    id: "stdin",
    title: "Reading stdin",
    source: `package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Type a line into the input box under the output and press Enter.
// Press EOF (or Ctrl+D) to end the input.
func main() {
	fmt.Println("Type something; I will shout it back.")
	sc := bufio.NewScanner(os.Stdin)
	n := 0
	for sc.Scan() {
		n++
		fmt.Println(strings.ToUpper(sc.Text()) + "!")
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "read error:", err)
	}
	fmt.Printf("Got %d lines. Bye.\\n", n)
}
`,
  },
  {
    id: "ticker",
    title: "Sleep and ticker",
    source: `package main

import (
	"fmt"
	"time"
)

// Output is streamed: each line appears as soon as it is printed.
func main() {
	start := time.Now()
	ticker := time.NewTicker(300 * time.Millisecond)
	defer ticker.Stop()
	done := time.After(2 * time.Second)
	for i := 1; ; i++ {
		select {
		case t := <-ticker.C:
			fmt.Printf("tick %d at %v\\n", i, t.Sub(start).Round(100*time.Millisecond))
		case <-done:
			fmt.Println("done after", time.Since(start).Round(100*time.Millisecond))
			return
		}
	}
}
`,
  },
  {
    id: "colors",
    title: "Coloured output",
    source: `package main

import (
	"fmt"
	"os"
)

// ANSI escape codes are shown as colours in the output panel.
func main() {
	colors := []struct {
		name string
		code int
	}{{"red", 31}, {"green", 32}, {"yellow", 33}, {"blue", 34}, {"magenta", 35}, {"cyan", 36}}
	for _, c := range colors {
		fmt.Printf("\\x1b[%dm%s\\x1b[0m ", c.code, c.name)
	}
	fmt.Println()
	fmt.Println("\\x1b[1mbold\\x1b[0m and normal")
	fmt.Fprintln(os.Stderr, "this line went to stderr")
}
`,
  },
];

export const DEFAULT_SOURCE = EXAMPLES[0].source;

export function findExample(id) {
  return EXAMPLES.find((e) => e.id === id) || null;
}
