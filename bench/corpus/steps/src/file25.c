/* Generated source 25 of the steps context. */
int f25(int x) { return x * 25 + 1; }
