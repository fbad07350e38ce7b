/* Generated source 1 of the steps context. */
int f1(int x) { return x * 1 + 1; }
